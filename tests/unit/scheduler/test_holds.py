"""The hold of a model a request just warmed: its policy's first-gap hold, plain values."""

from __future__ import annotations

import pytest

from warmstart.scheduler.holds import first_gap_hold, needs_hold, warmer
from warmstart.scheduler.policies import ModelContext, TrafficState, make_policy
from warmstart.scheduler.policies.base import Decision, Tier

HOT_MIN = 10_000


@pytest.mark.parametrize(("policy", "hot_for", "then"), [
    ("warmstart-20", 20, Tier.HOST),  # ski-rental: HOT for B minutes, then a host copy...
    ("warmstart", 240, Tier.DISK),  # ...over the histogram's range (240 minutes)
    ("hybrid", 240, Tier.DISK),  # no idle time known: the standard keep-alive
    ("fixed-10", 10, Tier.DISK),
])
def test_the_hold_is_the_policys_first_gap(policy: str, hot_for: int, then: Tier) -> None:
    p, ctx = make_policy(policy), ModelContext("m")
    for now_min in (HOT_MIN, HOT_MIN + 1, HOT_MIN + hot_for):
        assert first_gap_hold(p, ctx, HOT_MIN, now_min).tier == Tier.HOT, now_min
    assert first_gap_hold(p, ctx, HOT_MIN, HOT_MIN + hot_for + 1).tier == then


@pytest.mark.parametrize("policy", ["warmstart", "hybrid", "fixed-10"])
def test_the_hold_is_what_feeding_the_minutes_one_by_one_gives(policy: str) -> None:
    p, ctx = make_policy(policy), ModelContext("m", size_bytes=2**20, reference_bytes=2**21)
    decision, state = p.step(ctx, TrafficState(), HOT_MIN, 1)
    for now_min in range(HOT_MIN + 1, HOT_MIN + 600):
        assert first_gap_hold(p, ctx, HOT_MIN, now_min) == decision, now_min
        decision, state = p.step(ctx, state, now_min, 0)


def test_the_hold_applies_until_the_policy_has_seen_the_request() -> None:
    assert needs_hold(TrafficState(), HOT_MIN)
    seen = TrafficState(last_arrival_min=HOT_MIN - 1)  # the request's minute, just before
    assert not needs_hold(seen, HOT_MIN) and not needs_hold(TrafficState(last_arrival_min=HOT_MIN), HOT_MIN)
    assert needs_hold(TrafficState(last_arrival_min=HOT_MIN - 30), HOT_MIN)  # an older one


def test_the_warmer_decision_wins() -> None:
    policy, hold = Decision(Tier.DISK, 0.0), Decision(Tier.HOT, 0.5)
    assert warmer(policy, hold) is hold
    assert warmer(Decision(Tier.HOT, 0.9), hold).arrival_prob == 0.9
    assert warmer(Decision(Tier.HOST, 0.1), Decision(Tier.DISK, 0.0)).tier == Tier.HOST
