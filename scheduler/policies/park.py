"""``<policy>+host``: any policy, with the models it unloads parked at HOST instead of DISK.

The published policies (``fixed-N``, ``hybrid``) know two tiers: loaded or not. warmstart
also holds models at HOST (pages resident, a fraction of a cold start, host memory at
~1/500 of the GPU's price). So that a comparison under a memory budget measures the policy
and not the tiers it may use, ``hybrid+host`` is hybrid unchanged except that a model it
would unload goes to HOST while its last arrival is within the histogram range
(``IDLE_BINS`` minutes: the range the policy itself reasons over), and to DISK after that.
The HOT decisions and the arrival probabilities are the inner policy's, untouched.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from warmstart.scheduler.policies.base import IDLE_BINS, Decision, ModelContext, Policy, Tier, TrafficState

SUFFIX = "+host"


class ParkAtHost(Policy):
    """Wraps ``inner``: its DISK decisions within ``IDLE_BINS`` minutes of the last arrival
    become HOST."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name + SUFFIX

    def replan(self, context: ModelContext, state: TrafficState, now_min: int) -> dict[str, Any]:
        return self.inner.replan(context, state, now_min)

    def decide(self, context: ModelContext, state: TrafficState, now_min: int) -> Decision:
        return self._park(self.inner.decide(context, state, now_min), state, now_min)

    def step(self, context: ModelContext, state: TrafficState, now_min: int,
             arrivals: int) -> tuple[Decision, TrafficState]:
        decision, new = self.inner.step(context, state, now_min, arrivals)
        return self._park(decision, new, now_min), new

    @staticmethod
    def _park(decision: Decision, state: TrafficState, now_min: int) -> Decision:
        if decision.tier != Tier.DISK or state.last_arrival_min is None:
            return decision
        if now_min + 1 - state.last_arrival_min > IDLE_BINS:
            return decision
        return replace(decision, tier=Tier.HOST, reason=decision.reason + SUFFIX)
