"""The autoscale benchmark's pure logic: the compressed day and its earlier days, the
queue-length scaler it is compared with, the counting of one mode and the targets. No
service or process is started."""

from __future__ import annotations

import pytest

from warmstart.bench.autoscale import (
    NIGHT_SHARES,
    SURGE_SHARES,
    DayShape,
    QueueLengthTarget,
    earlier_days,
    minute_counts,
    percentile,
    schedule,
    summarise_mode,
    verdicts,
    worker_minutes,
)


def test_the_day_has_a_surge_of_the_asked_factor_within_one_minute() -> None:
    shape = DayShape(minute_s=10.0, night_min=20, surge_min=6, after_min=4, night_rate_per_s=2.0, surge_factor=10.0)
    arrivals = schedule(shape, seed=3)
    assert arrivals == schedule(shape, seed=3) and arrivals != schedule(shape, seed=4)
    per_minute = [sum(1 for at, _ in arrivals if int(at // shape.minute_s) == m) for m in range(shape.minutes)]
    night = sum(per_minute[: shape.night_min]) / shape.night_min
    surge = sum(per_minute[shape.night_min: shape.night_min + shape.surge_min]) / shape.surge_min
    assert surge >= 8 * night  # the "at least 8x within one traffic minute"
    assert per_minute[shape.night_min] >= 8 * night  # the first surge minute already
    night_models = {m for at, m in arrivals if not shape.in_surge(int(at // shape.minute_s))}
    surge_models = {m for at, m in arrivals if shape.in_surge(int(at // shape.minute_s))}
    assert night_models <= set(NIGHT_SHARES) and surge_models == set(SURGE_SHARES)


def test_earlier_days_have_the_same_shape_but_their_own_draws() -> None:
    shape = DayShape(minute_s=5.0, night_min=10, surge_min=3, after_min=2)
    days = earlier_days(shape, 2, seed=1)
    assert len(days) == 2 and days[0] != days[1]
    for counts in days:
        assert not any(m in ("premium", "long-form") and not shape.in_surge(minute) for (m, minute) in counts)
        assert any(m == "premium" and shape.in_surge(minute) for (m, minute) in counts)
    assert minute_counts([(0.5, "a"), (1.5, "a"), (5.0, "a")], 5.0) == {("a", 0): 2, ("a", 1): 1}


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError):
        DayShape(minute_s=0)
    with pytest.raises(ValueError):
        DayShape(surge_factor=0.5)


def test_the_queue_length_scaler_rises_at_once_and_falls_after_its_window() -> None:
    queued, now = [0], [0.0]
    target = QueueLengthTarget(lambda: queued[0], list_length=5, floor=1, stabilise_s=10.0, clock=lambda: now[0])
    assert target() == 1  # floor
    queued[0] = 11
    assert target() == 3  # ceil(11 / 5)
    queued[0], now[0] = 0, 5.0
    assert target() == 3  # still within the window
    now[0] = 16.0
    assert target() == 1


def test_percentiles_and_worker_minutes() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 99) == 99
    # One worker all the window, one for its second half, one that started and stopped outside.
    lifetimes = {"a": [0.0, None], "b": [60.0, 200.0], "c": [500.0, 600.0]}
    assert worker_minutes(lifetimes, 0.0, 120.0) == pytest.approx(3.0)


def test_a_mode_counts_outcomes_cold_waits_and_the_surge_apart() -> None:
    shape = DayShape(minute_s=1.0, night_min=2, surge_min=1, after_min=1)
    records = [
        {"sent_s": 0.5, "outcome": "ok", "latency_s": 0.01, "cold": False},
        {"sent_s": 2.1, "outcome": "ok", "latency_s": 2.0, "cold": True},
        {"sent_s": 2.2, "outcome": "lost", "latency_s": None, "cold": True},
        {"sent_s": 3.5, "outcome": "failed", "latency_s": None, "cold": False},
    ]
    summary = summarise_mode(records, shape, minutes_alive=1.5)
    assert (summary["requests"], summary["failed"], summary["lost"], summary["cold_waits"]) == (4, 1, 1, 2)
    assert summary["surge"]["requests"] == 2 and summary["surge"]["p99_ms"] == pytest.approx(2000.0)
    assert summary["worker_minutes"] == 1.5


def test_the_targets_are_ratios_of_modes_of_the_same_run() -> None:
    def mode(cold: int, p99: float, minutes: float, lost: int = 0) -> dict[str, object]:
        return {"cold_waits": cold, "lost": lost, "worker_minutes": minutes, "surge": {"p99_ms": p99}}

    good = verdicts({"predictive": mode(2, 100, 5), "reactive": mode(40, 900, 4), "fixed": mode(0, 50, 10)})
    assert all(good.values())
    bad = verdicts({"predictive": mode(10, 400, 7, lost=1), "reactive": mode(40, 900, 4), "fixed": mode(0, 50, 10)})
    assert not any(bad.values())
    assert verdicts({"predictive": mode(0, 100, 5), "reactive": mode(0, 900, 4)})["cold_waits_le_fifth_of_reactive"] is None
