"""Fixed keep-alive: keep a model loaded for N minutes after its last arrival.

This is what most serverless platforms did in 2019 (Azure Functions kept an instance 20
minutes, AWS Lambda about 10); ``fixed-10`` is the reference the simulator normalises waste
to. It needs nothing but the last arrival.
"""

from __future__ import annotations

from warmstart.scheduler.policies.base import Decision, ModelContext, Policy, Tier, TrafficState, empirical_hazard

from warmstart.infra.errors import SchedulerError


class FixedKeepAlive(Policy):
    """Keep the model HOT for ``keep_alive_min`` minutes after each minute with arrivals."""

    def __init__(self, keep_alive_min: int = 10) -> None:
        """Args:
            keep_alive_min: minutes to stay HOT after the last arrival (>= 0).

        Raises:
            SchedulerError: a negative keep-alive.
        """
        if keep_alive_min < 0:
            raise SchedulerError(
                f"fixed keep-alive must be >= 0 minutes, got {keep_alive_min}; use fixed-10"
            )
        self.keep_alive_min = int(keep_alive_min)
        self.name = f"fixed-{self.keep_alive_min}"

    def decide(self, context: ModelContext, state: TrafficState, now_min: int) -> Decision:
        if state.last_arrival_min is None:
            return Decision(Tier.DISK, 0.0, None, "never-seen")
        idle_min = now_min + 1 - state.last_arrival_min
        if idle_min <= self.keep_alive_min:
            return Decision(Tier.HOT, empirical_hazard(state, idle_min), None, "keep-alive")
        return Decision(Tier.DISK, 0.0, None, "expired")
