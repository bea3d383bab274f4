"""The hindsight rows of `warmstart simulate --headroom`, on hand-computable traces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from warmstart.infra.errors import SchedulerError
from warmstart.scheduler.headroom import (
    first_arrival_floor_pct,
    idle_minutes,
    known_hazard_hot,
    measure_headroom,
    own_hazard,
)
from warmstart.scheduler.policies.warmstart import WarmstartPolicy
from warmstart.scheduler.simulator import simulate, trace_contexts
from warmstart.scheduler.traces import Trace


def row(length: int, active: list[int]) -> np.ndarray:
    out = np.zeros(length, dtype=np.int64)
    out[active] = 1
    return out


def test_own_hazard_counts_every_idle_time_of_the_row() -> None:
    hazard = own_hazard(row(30, [0, 5, 20]))  # idle times 5 and 15; the tail is not one
    assert hazard[5] == pytest.approx(0.5)  # 2 reached 5 minutes, 1 ended there
    assert hazard[15] == pytest.approx(1.0)
    assert np.count_nonzero(hazard) == 2
    assert not own_hazard(row(30, [7])).any()  # one arrival: no idle time known


def test_idle_minutes_counts_from_the_latest_arrival() -> None:
    assert idle_minutes(row(6, [1, 4])).tolist() == [-1, -1, 1, 2, 3, 1]


def test_known_hazard_is_hot_where_the_future_idle_times_end() -> None:
    hot = known_hazard_hot(row(30, [0, 5, 20]), theta=0.4)
    # h(5) = 1/2 and h(15) = 1: d = 5 after minutes 0, 5 and 20; d = 15 after minute 5.
    assert np.flatnonzero(hot).tolist() == [5, 10, 20, 25]
    assert not known_hazard_hot(row(30, [0, 5, 20]), theta=1.01).any()


def two_models() -> Trace:
    counts = np.zeros((2, 60), dtype=np.int64)
    counts[0, [0, 30, 31, 50]] = 1  # first idle time 30 minutes
    counts[1, 10] = 3
    return Trace(minutes=np.arange(1, 61), names=["a", "b"], counts=counts,
                 memory_mb=np.array([100.0, 50.0]), duration_ms=np.array([10.0, 10.0]))


def test_hindsight_rows_against_the_policy_on_a_small_trace() -> None:
    trace = two_models()
    result = measure_headroom(trace, ["warmstart-5"])
    json.dumps(result)
    assert result["first_arrival_floor_pct"] == pytest.approx(2 / 5 * 100)
    rows = result["policies"][0]["rows"]
    assert set(rows) == {"warmstart-5", "known-first-gap", "known-hazard"}
    # a (100 MB, fleet mean 75 MB): B = 5 × 75/100, θ = 1/(1 + 3.75) ≈ 0.21. The policy
    # holds a for 3 minutes after its first arrival, not 30; after minute 30 it knows one
    # idle time of 30, and its h(1) = (0 + 0 + 1/2) / (1 + 1 + 1) < θ. Cold: a at 0, 30, 31
    # and 50, b at 10.
    assert rows["warmstart-5"]["cold_starts"] == 5
    # Knowing a's idle times (30, 1, 19) during its first one makes minute 30 HOT.
    assert rows["known-first-gap"]["cold_starts"] == 4
    # Knowing them throughout: h(30) = 1, h(1) = 1/3 and h(19) = 1/2 are all ≥ θ, so a is
    # HOT at 30, 31 and 50; only the first arrivals are cold.
    assert rows["known-hazard"]["cold_starts"] == 2
    assert rows["known-hazard"]["overall_cold_pct"] == pytest.approx(result["first_arrival_floor_pct"])
    # The policy's row is the simulator's own measure of it.
    simulated = simulate(trace, ["warmstart-5"])["policies"]["warmstart-5"]
    for key in ("overall_cold_pct", "q3_cold_pct", "waste_pct", "cold_starts"):
        assert rows["warmstart-5"][key] == pytest.approx(simulated[key])


def test_the_thresholds_are_the_policy_s_own() -> None:
    trace = two_models()
    contexts = trace_contexts(trace)
    policy = WarmstartPolicy(5)
    # The smaller model gets the longer hold: θ scales with its size over the fleet's mean.
    assert policy.hot_threshold_for(contexts[1]) < policy.hot_threshold_for(contexts[0])


def test_only_warmstart_policies_and_real_traces() -> None:
    with pytest.raises(SchedulerError, match="warmstart policies, not 'hybrid'"):
        measure_headroom(two_models(), ["hybrid"])
    empty = Trace(minutes=np.arange(1, 1), names=[], counts=np.zeros((0, 0), dtype=np.int64),
                  memory_mb=np.zeros(0), duration_ms=np.zeros(0))
    with pytest.raises(SchedulerError, match="no models or no minutes"):
        measure_headroom(empty)


def test_floor_counts_one_first_minute_per_model() -> None:
    counts = np.zeros((3, 10), dtype=np.int64)
    counts[0, [1, 2, 3]] = 5
    counts[1, 4] = 1  # model 2 never arrives: no floor
    trace = Trace(minutes=np.arange(1, 11), names=["a", "b", "c"], counts=counts,
                  memory_mb=np.ones(3), duration_ms=np.ones(3))
    assert first_arrival_floor_pct(trace) == pytest.approx(2 / 4 * 100)
