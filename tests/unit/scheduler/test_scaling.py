"""desired_workers with plain values: ahead of a predicted surge, floor and ceiling, memory,
and a fall only by hand-over."""

from __future__ import annotations

import pytest

from warmstart.infra.errors import SettingsError
from warmstart.scheduler.scaling import (
    DAY_MIN, ModelLoad, ScaleConfig, daily_mean, desired_workers, expected_by_pattern, forecast, step_down,
)

GiB = 1024**3


def config(**overrides: object) -> ScaleConfig:
    base = dict(min_workers=1, max_workers=10, slots_per_worker=4, device_budget_bytes=8 * GiB, minute_s=60.0,
                lead_min=2, target_utilization=0.5)  # fmt: skip
    return ScaleConfig(**{**base, **overrides})  # type: ignore[arg-type]


def test_the_forecast_sees_yesterdays_surge_before_it_comes() -> None:
    now = 3 * DAY_MIN + 600
    history = {now + 2 - DAY_MIN: 800, now + 2 - 2 * DAY_MIN: 1000, now - 2 * DAY_MIN: 10}
    recent = {now - 1: 10, now - 2: 10, now - 3: 10}
    assert forecast(recent, history, now, 4) == [10.0, 10.0, 900.0, 10.0]
    assert forecast({}, {}, now, 2) == [0.0, 0.0]


def test_the_daily_mean_counts_only_days_that_recorded_something() -> None:
    now = 3 * DAY_MIN + 600
    # Day 1 recorded a quiet minute elsewhere in its window; day 3 recorded nothing at all.
    history = {now + 1 - 2 * DAY_MIN: 6, now + 5 - DAY_MIN: 0}
    assert daily_mean(history, now, 3, days=3) == [0.0, 3.0, 0.0]
    assert daily_mean({}, now, 2) == [0.0, 0.0]


def test_a_model_is_pre_warmed_when_the_pattern_expects_an_arrival_in_the_window() -> None:
    assert expected_by_pattern([0.0, 0.5, 0.5])
    assert not expected_by_pattern([0.3, 0.3, 0.3])
    assert not expected_by_pattern([])


def test_it_rises_by_the_lead_time_before_a_predicted_surge() -> None:
    quiet, surge = 10.0, 900.0
    # one model, 0.2 s a request; 2 busy slots per worker at 50 %
    load = lambda fc: [ModelLoad("m", fc, service_s=0.2, size_bytes=GiB, hot=True)]  # noqa: E731
    far = desired_workers(load([quiet, quiet, quiet, surge]), config(lead_min=2))
    near = desired_workers(load([quiet, quiet, surge, surge]), config(lead_min=2))
    assert far.workers == 1  # the surge is beyond the lead time: not yet
    assert near.workers == 2 and near.peak_minute == 2  # 900/60*0.2 = 3 busy s/s -> 3/(4*0.5) -> 2
    assert near.compute_workers == 2


def test_floor_ceiling_and_memory() -> None:
    idle = [ModelLoad("m", [0.0], 0.1, GiB)]
    assert desired_workers(idle, config(min_workers=0)).workers == 0
    assert desired_workers(idle, config(min_workers=2)).workers == 2
    big = [ModelLoad("m", [60000.0] * 3, 1.0, GiB, hot=True)]
    assert desired_workers(big, config()).workers == 10  # the ceiling
    five = [ModelLoad(f"m{i}", [0.0], 0.1, 3 * GiB, hot=True) for i in range(5)]
    decision = desired_workers(five, config())
    assert decision.memory_workers == 3 and decision.workers == 3  # two 3 GiB models per 8 GiB worker
    with pytest.raises(SettingsError, match="above the ceiling"):
        desired_workers(idle, config(min_workers=3, max_workers=2))


def test_it_falls_only_once_the_workers_to_remove_hand_over() -> None:
    decision = desired_workers([ModelLoad("a", [0.0], 0.1, GiB, hot=True)], config())
    assert decision.workers == 1
    # w2 holds b alone: removing it would leave b cold, so the signal holds at 2, w2 drains.
    held = step_down(decision, 2, {"w1": {"a"}, "w2": {"b", "c"}, "w0": set()} | {})
    assert held.workers == 2 and held.held  # 3 live, wants 1: remove w0 and w1 (fewest HOT); a is only on w1
    assert set(held.draining) == {"w0", "w1"}
    # Once a is HOT on w2 too, it falls.
    fell = step_down(decision, 2, {"w1": {"a"}, "w2": {"a", "b", "c"}, "w0": set()})
    assert fell.workers == 1 and not fell.held and set(fell.draining) == {"w0", "w1"}
    # Rising is never held.
    assert step_down(desired_workers([ModelLoad("a", [6000.0], 1.0, GiB)], config()), 2, {"w1": {"a"}}).workers > 2


def test_workers_that_asked_to_leave_are_removed_first_and_keep_draining_at_a_steady_signal() -> None:
    decision = desired_workers([ModelLoad("a", [0.0], 0.1, GiB, hot=True)], config())
    hot = {"w-go": {"a"}, "w-stay": set()}
    # Without the request w-stay (empty) would go; w-go asked to leave, so it drains, held.
    assert step_down(decision, 1, hot).draining == ["w-stay"]
    held = step_down(decision, 1, hot, leaving={"w-go"})
    assert held.draining == ["w-go"] and held.workers == 1 and not held.held  # already at 1: nothing to hold
    done = step_down(decision, 1, {"w-go": {"a"}, "w-stay": {"a"}}, leaving={"w-go"})
    assert done.draining == ["w-go"] and done.workers == 1
