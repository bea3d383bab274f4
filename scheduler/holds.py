"""The hold of a model that a request just warmed, before its policy has seen that request.

A lazy pre-warm makes a model HOT within seconds of a request, but the policy only learns of
the request once its minute is complete (the beat feeds completed minutes), and not at all
when the request was not recorded (a raw Celery client). Until then the policy's decision
knows nothing of it (for a new model: REMOTE or DISK), and the next request would download
the model again. So a model that a request warmed keeps at least what its policy does right
after a first arrival — its first-gap hold: ``warmstart``'s ski-rental hold (HOT for ``B``
minutes, then HOST), ``hybrid``'s standard keep-alive, ``fixed-N``'s ``N`` minutes — counted
from the minute it became HOT, for as long as the policy has seen no arrival since.

Pure: the policy, the minute the model became HOT, and the clock in; a decision out.
"""

from __future__ import annotations

from dataclasses import replace

from warmstart.scheduler.policies.base import TIER_ORDER, Decision, ModelContext, Policy, TrafficState

_RANK = {t: i for i, t in enumerate(TIER_ORDER)}  # 0 = HOT (warmest)


def first_gap_hold(policy: Policy, context: ModelContext, hot_min: int, now_min: int) -> Decision:
    """The policy's decision for minute ``now_min`` had the model's one arrival come in minute
    ``hot_min`` (the minute a request made it HOT).

    Args:
        policy: the model's policy.
        context: the model's costs.
        hot_min: the minute the model became HOT.
        now_min: the minute being planned (the beat's current minute).
    """
    decision, state = policy.step(context, TrafficState(), hot_min, 1)
    if now_min <= hot_min + 1:
        return decision
    # The minutes since passed without arrivals; observing such a minute only moves
    # last_observed_min (see policies.base.observe), so no need to feed them one by one.
    return policy.decide(context, replace(state, last_observed_min=now_min - 1), now_min - 1)


def needs_hold(state: TrafficState, hot_min: int) -> bool:
    """True when the policy has seen no arrival from the minute before ``hot_min`` on: the
    request that warmed the model (in that minute or the one before) is not in its state."""
    return state.last_arrival_min is None or state.last_arrival_min < hot_min - 1


def warmer(decision: Decision, hold: Decision) -> Decision:
    """``hold`` when it asks for a warmer tier than ``decision``, else ``decision``."""
    return hold if _RANK[hold.tier] < _RANK[decision.tier] else decision
