"""Policy decisions on hand-made arrival sequences."""

from __future__ import annotations

import json

import pytest

from warmstart.infra.errors import SchedulerError
from warmstart.scheduler.policies import ModelContext, Tier, TrafficState, make_policy
from warmstart.scheduler.policies.hybrid import histogram_windows
from warmstart.scheduler.policies.hazard import data_support, first_gap_prob
from warmstart.scheduler.policies.warmstart import idle_hazard


def run(policy_name: str, arrivals: dict[int, int], minutes: int, start: int = 0):
    """Feed minutes start..start+minutes-1; return {minute: tier held in that minute}."""
    policy = make_policy(policy_name)
    state, held = TrafficState(), {}
    decision = None
    for m in range(start, start + minutes):
        held[m] = decision.tier if decision else Tier.DISK
        decision, state = policy.step(ModelContext("m"), state, m, arrivals.get(m, 0))
    return held, state


def test_make_policy_names() -> None:
    assert make_policy("fixed-10").name == "fixed-10"
    assert make_policy("fixed-3").keep_alive_min == 3
    assert make_policy("warmstart-20").breakeven_min == 20
    with pytest.raises(SchedulerError, match="known policies: fixed-10"):
        make_policy("lru")


def test_fixed_keeps_exactly_n_minutes() -> None:
    held, _ = run("fixed-10", {5: 1}, 30)
    hot = [m for m, t in held.items() if t == Tier.HOT]
    assert hot == list(range(6, 16))


def test_state_round_trips_through_json_and_step_is_pure() -> None:
    _, state = run("hybrid", {1: 2, 7: 1, 20: 3}, 30)
    again = TrafficState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state
    before = state.to_dict()
    make_policy("warmstart").step(ModelContext(), state, 31, 4)
    assert state.to_dict() == before
    assert state.idle_hist[6] == 1 and state.idle_hist[13] == 1
    with pytest.raises(SchedulerError, match="not after"):
        make_policy("hybrid").step(ModelContext(), state, 29, 0)
    with pytest.raises(SchedulerError, match="bins"):
        TrafficState.from_dict({**before, "idle_hist": [0] * 3})


def test_hybrid_prewarms_before_periodic_arrival() -> None:
    arrivals = {m: 1 for m in range(0, 600, 30)}
    held, state = run("hybrid", arrivals, 600)
    w = histogram_windows(state)
    assert w["mode"] == "histogram"
    assert (w["prewarm_min"], w["keepalive_min"]) == (27, 33)  # 0.9·30, 1.1·30
    # After learning, unloaded after the call, loaded from 27 min, warm at each arrival.
    for m in range(60, 570):
        assert (held[m] == Tier.HOT) == ((m % 30) >= 27 or (m % 30) == 0), m


def test_hybrid_falls_back_when_not_representative() -> None:
    # First idle period: nothing known, standard keep-alive over the 4 h range.
    held, state = run("hybrid", {0: 1}, 300)
    assert held[1] == Tier.HOT and held[240] == Tier.HOT and held[241] != Tier.HOT
    # Idle times spread evenly over 1..120 minutes: CV of the bin counts below 2.
    state = TrafficState()
    state.idle_hist[1:121] = [2] * 120
    assert histogram_windows(state) == {"prewarm_min": 0, "keepalive_min": 240,
                                        "mode": "fallback"}
    # Mostly out-of-range idle times: forecast from the recent ones with 15% margins.
    state = TrafficState(idle_oob=3, recent_idle_min=[300, 310, 320])
    w = histogram_windows(state)
    assert (w["mode"], w["prewarm_min"], w["keepalive_min"]) == ("oob", 263, 357)


def test_warmstart_periodic_is_tight_after_learning() -> None:
    arrivals = {m: 1 for m in range(0, 600, 30)}
    held, _ = run("warmstart-10", arrivals, 600)
    late = [m for m in range(400, 570) if held[m] == Tier.HOT]
    assert late == [m for m in range(400, 570) if m % 30 == 0]
    # Between calls it holds the model at HOST (cheap to raise), not on disk.
    assert held[415] == Tier.HOST


def test_warmstart_learns_a_daily_pattern() -> None:
    # One call a day at 09:00 — idle times out of the histogram's range.
    day = 1440
    arrivals = {d * day + 540: 1 for d in range(4)}
    held, state = run("warmstart-10", arrivals, 4 * day)
    assert held[day + 300] == Tier.DISK  # 3 a.m.: nothing expected
    assert held[540] != Tier.HOT  # day 1: nothing known
    # From day 2 on, a full day has been observed: the minute-of-day profile pre-warms it.
    for d in (1, 2, 3):
        assert held[d * day + 540] == Tier.HOT
        assert held[d * day + 540 - 3] != Tier.HOT  # only within ±2 minutes of 09:00
    # ...and not all day long.
    assert sum(t == Tier.HOT for m, t in held.items() if m >= 2 * day) <= 2 * 5 + 10
    assert state.days_observed() == 4


def test_warmstart_ski_rental_without_history() -> None:
    held, _ = run("warmstart-10", {0: 1}, 300)
    assert [m for m, t in held.items() if t == Tier.HOT] == list(range(1, 11))
    assert held[100] == Tier.HOST and held[260] == Tier.DISK


def test_warmstart_bigger_models_are_kept_less() -> None:
    policy = make_policy("warmstart")
    small = ModelContext("s", size_bytes=10, reference_bytes=100)
    big = ModelContext("b", size_bytes=1000, reference_bytes=100)
    assert policy.hot_threshold_for(small) < policy.hot_threshold_for(big)


def test_warmstart_first_gap_prob_is_laplace_and_holds_b_minutes() -> None:
    """Before any idle time is known, h(d) = 1/(d + 1) (rule of succession); HOT while
    h >= θ = 1/(1 + B), i.e. exactly B minutes, and each decision says that h."""
    policy = make_policy("warmstart-10")
    decision, state = policy.step(ModelContext("m"), TrafficState(), 100, 1)
    assert (decision.tier, decision.reason) == (Tier.HOT, "ski-rental")
    assert decision.arrival_prob == pytest.approx(1 / 2)
    seen = {}
    for minute in range(101, 130):
        decision, state = policy.step(ModelContext("m"), state, minute, 0)
        seen[minute + 1 - 100] = decision
    assert [d for d, dec in seen.items() if dec.tier == Tier.HOT] == list(range(2, 11))
    assert seen[10].arrival_prob == pytest.approx(1 / 11)  # = θ: the last HOT minute
    assert (seen[11].tier, seen[11].reason) == (Tier.HOST, "ski-rental-host")
    assert seen[11].arrival_prob == pytest.approx(1 / 12)


def test_warmstart_arrival_prob_is_the_hazard_of_that_minute() -> None:
    """Within one HOT window each minute reports its own hazard, not the window's best:
    a budget ranks models by it."""
    state = TrafficState()
    state.idle_hist[1] = 8   # mostly back-to-back minutes...
    state.idle_hist[30] = 2  # ...and two half-hour gaps
    state.recent_idle_min = [1] * 8 + [30] * 2
    state.last_observed_min = 99
    state.first_observed_min = 0
    policy = make_policy("warmstart")
    hazard = idle_hazard(state.idle_hist, state.idle_oob)
    decision, state = policy.step(ModelContext("m"), state, 100, 1)
    got = {1: decision}
    for minute in range(101, 140):
        decision, state = policy.step(ModelContext("m"), state, minute, 0)
        got[minute + 1 - 100] = decision
    hot = [d for d, dec in got.items() if dec.tier == Tier.HOT]
    assert {1, 15, 30} <= set(hot)
    for d, dec in got.items():
        if d <= 30:  # up to the longest idle time seen; past it, the first-gap rule
            assert dec.arrival_prob == pytest.approx(hazard[d], rel=1e-5), d
    # (8 + h̄(1) + n₀(1)) / (10 + 1 + R₀(1)): h̄(1) = 8 events / 12 minutes at risk over the
    # window [1, 2]; the first-gap prior puts 1/2 of its idle time at 1 and 1 at risk.
    assert got[1].arrival_prob == pytest.approx((8 + 8 / 12 + 1 / 2) / 12, rel=1e-5)
    # One HOT window from 15 on: its first minutes are far less likely than its 30th.
    assert got[15].arrival_prob < 0.02 and got[30].arrival_prob > 0.6


def test_hazard_without_data_is_the_first_gap_rule() -> None:
    hazard = idle_hazard([0] * 240, 0)
    assert hazard[0] == 0.0
    for d in (1, 2, 10, 239):
        assert hazard[d] == pytest.approx(first_gap_prob(d))
    assert data_support([0] * 240, 0) == 0


def test_hazard_past_the_longest_idle_time_is_the_first_gap_rule() -> None:
    hist = [0] * 240
    hist[10] = 5
    hazard = idle_hazard(hist, 0)
    assert data_support(hist, 0) == 10
    assert hazard[10] > 0.8  # five out of five idle times ended there
    for d in (11, 20, 100):
        assert hazard[d] == pytest.approx(1 / (d + 1))
    assert data_support(hist, 1) == 239  # an idle time past the range: at risk everywhere


def test_warmstart_trusts_a_gap_only_after_seeing_it_often() -> None:
    """Two half-hour idle times do not show that the model stays away for 5 minutes; twenty
    do. The prior (one pseudo idle time) weighs against the data at risk."""
    policy = make_policy("warmstart")
    ctx = ModelContext("m")
    theta = policy.hot_threshold_for(ctx)
    few, many = [0] * 240, [0] * 240
    few[30], many[30] = 2, 20
    assert idle_hazard(few, 0)[5] >= theta > idle_hazard(many, 0)[5]
    assert idle_hazard(many, 0)[30] > 0.9
    for hist, hot_at_5 in ((few, True), (many, False)):
        state = TrafficState(idle_hist=hist, last_arrival_min=0, first_observed_min=0,
                             last_observed_min=0)
        plan = policy.replan(ctx, state, 0)
        state.plan = plan
        assert (policy.decide(ctx, state, 4).tier == Tier.HOT) is hot_at_5
        assert policy.decide(ctx, state, 29).tier == Tier.HOT


def test_warmstart_holds_b_minutes_past_the_longest_idle_time() -> None:
    """A 3-minute timer that misses: past 3 minutes the data say nothing, and the model gets
    the first gap's ski-rental hold (HOT while 1/(d + 1) >= 1/(1 + B)), then HOST."""
    arrivals = {m: 1 for m in range(0, 300, 3)}
    held, _ = run("warmstart-10", arrivals, 330)
    last = 297
    assert [d for d in range(1, 4) if held[last + d] == Tier.HOT] == [3]
    assert all(held[last + d] == Tier.HOT for d in range(4, 11))
    assert held[last + 11] == Tier.HOST and held[last + 30] == Tier.HOST
    policy = make_policy("warmstart-10")
    _, state = run("warmstart-10", arrivals, 300)
    for minute in range(300, 306):  # the last decision is for minute 306, idle 9 minutes
        decision, state = policy.step(ModelContext("m"), state, minute, 0)
    assert (decision.tier, decision.reason) == (Tier.HOT, "beyond-support")
    assert decision.arrival_prob == pytest.approx(first_gap_prob(306 - last))


def test_warmstart_rebuilds_a_plan_stored_without_probabilities() -> None:
    """A state saved by the previous version (intervals with a max, no per-minute
    probabilities) still decides, as if the plan had just been built."""
    _, state = run("warmstart", {m: 1 for m in range(0, 200, 20)}, 205)
    policy = make_policy("warmstart")
    fresh = policy.decide(ModelContext("m"), state, 204)
    old = TrafficState.from_dict({**state.to_dict(), "plan": {
        "mode": "hazard", "hot": [[1, 40, 1.0]], "host": [], "support_min": 40,
        "host_threshold": 0.001, "predicted_idle_min": 20.0}})
    assert policy.decide(ModelContext("m"), old, 204) == fresh


def test_warmstart_fast_step_decides_exactly_as_the_full_plan() -> None:
    """WarmstartPolicy.step skips the plan after busy minutes; every decision (tier,
    probability, predicted minute) must equal the generic step's, which always replans."""
    import numpy as np

    from warmstart.scheduler.policies.base import Policy
    from warmstart.scheduler.policies.warmstart import WarmstartPolicy, hazard_at_1, idle_hazard

    rng = np.random.default_rng(3)
    for case in range(30):
        policy = WarmstartPolicy(float(rng.choice([5.0, 40.0, 240.0])))
        ctx = ModelContext("m", None, int(rng.integers(1, 500)) * 2**20, 200 * 2**20)
        rate = float(rng.choice([0.02, 0.3, 0.9, 3.0]))
        counts = rng.poisson(rate, 600) * (rng.random(600) < rng.random())
        fast = slow = TrafficState()
        for minute, n in enumerate(counts.tolist()):
            d_fast, fast = policy.step(ctx, fast, minute, n)
            d_slow, slow = Policy.step(policy, ctx, slow, minute, n)
            assert d_fast == d_slow, (case, minute)
        assert hazard_at_1(slow.idle_hist, slow.idle_oob) == idle_hazard(slow.idle_hist, slow.idle_oob)[1]


def test_plus_host_parks_what_the_inner_policy_unloads_within_the_histogram_range() -> None:
    plain, parked = make_policy("fixed-10"), make_policy("fixed-10+host")
    assert parked.name == "fixed-10+host"
    ctx = ModelContext("m")
    state = TrafficState()
    a, state_a = plain.step(ctx, state, 0, 1)
    b, state_b = parked.step(ctx, state, 0, 1)
    assert a == b and a.tier == Tier.HOT and state_a == state_b  # HOT decisions untouched
    # The decision at minute t is for t + 1: idle 240 minutes is the last one parked.
    for minute, want in ((10, Tier.HOST), (239, Tier.HOST), (240, Tier.DISK), (500, Tier.DISK)):
        assert plain.decide(ctx, state_a, minute).tier == Tier.DISK or minute < 10
        assert parked.decide(ctx, state_b, minute).tier == want, minute
    never = parked.decide(ctx, TrafficState(), 5)
    assert never.tier == Tier.DISK  # never seen: nothing to park
    with pytest.raises(SchedulerError):
        make_policy("hybrid+host+host")
