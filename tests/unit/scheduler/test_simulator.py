"""Simulator metrics on a tiny hand-computable trace."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from warmstart.infra.errors import SchedulerError
from warmstart.scheduler.costs import ModelCosts
from warmstart.scheduler.planner import ModelDemand, WorkerState, plan
from warmstart.scheduler.policies.base import Tier
from warmstart.scheduler.simulator import _budgeted, simulate
from warmstart.scheduler.traces import Trace


def tiny() -> Trace:
    counts = np.zeros((2, 30), dtype=np.int64)
    counts[0, [0, 5, 20]] = 1  # model a: gaps 5 and 15
    counts[1, 10] = 4          # model b: one busy minute
    return Trace(minutes=np.arange(1, 31), names=["a", "b"], counts=counts,
                 memory_mb=np.array([100.0, 50.0]), duration_ms=np.array([10.0, 10.0]))


def test_fixed_keep_alive_metrics_by_hand() -> None:
    r = simulate(tiny(), ["fixed-10", "fixed-5"])
    f10, f5 = r["policies"]["fixed-10"], r["policies"]["fixed-5"]
    # a: cold at 0 and 20 (gap 15 > 10), warm at 5; b: cold at its only minute.
    assert f10["overall_cold_pct"] == pytest.approx(75.0)
    assert f10["q3_cold_pct"] == pytest.approx(200 / 3 + 0.75 * (100 - 200 / 3))
    # Idle HOT minutes: a 4 + 10 + 9 (trace ends) at 100 MB, b 10 at 50 MB.
    assert f10["waste_mb_min"] == pytest.approx(2300 + 500)
    assert f10["waste_pct"] == pytest.approx(100.0)
    # fixed-5: a 4 + 5 + 5, b 5 → (1400 + 250) / 2800.
    assert f5["waste_pct"] == pytest.approx(1650 / 2800 * 100)
    assert f5["overall_cold_pct"] == pytest.approx(75.0)
    assert f10["cold_starts"] == 3
    json.dumps(r)  # JSON-ready


def test_cold_seconds_from_remote_then_disk_and_budget_evictions() -> None:
    r = simulate(tiny(), ["fixed-10"], budget_bytes=10 * 2**40)
    m = r["policies"]["fixed-10"]
    assert m["evictions"] == 0 and m["budget_cold_pct"] == m["overall_cold_pct"]
    tight = simulate(tiny(), ["fixed-10"], budget_bytes=60 * 2**20)["policies"]["fixed-10"]
    # Only b (50 MB) fits: a's warm minute 5 becomes a cold start once evicted.
    assert tight["evictions"] > 0 and tight["budget_cold_pct"] == pytest.approx(100.0)
    assert tight["cold_seconds"] > m["cold_seconds"] > 0


def test_all_default_policies_and_errors() -> None:
    r = simulate(tiny())
    assert set(r["policies"]) == {"fixed-10", "hybrid", "hybrid+host", "warmstart"}
    for m in r["policies"].values():
        assert 0 <= m["overall_cold_pct"] <= 100 and m["waste_pct"] >= 0
    with pytest.raises(SchedulerError, match="unknown policy"):
        simulate(tiny(), ["nope"])
    with pytest.raises(SchedulerError, match="budget_bytes"):
        simulate(tiny(), budget_bytes=0)


def test_plot_writes_a_png(tmp_path) -> None:
    from warmstart.scheduler.plot import plot_tradeoff
    from warmstart.scheduler.report import print_simulation
    from rich.console import Console

    r = simulate(tiny(), ["fixed-10", "fixed-5", "hybrid", "warmstart", "warmstart-5"])
    out = plot_tradeoff(r, tmp_path / "t.png")
    assert out.stat().st_size > 1000
    console = Console(record=True, width=200)
    print_simulation(r, console)
    assert "warmstart-5" in console.export_text()


MiB = 2**20


def saved_of(costs: list[ModelCosts]) -> np.ndarray:
    return np.array([[c.seconds_saved(Tier.HOT, Tier.HOST), c.seconds_saved(Tier.HOST, Tier.DISK)]
                     for c in costs])


def test_budget_keeps_a_later_model_that_still_fits() -> None:
    """Greedy by value per byte, skipping what does not fit (as the planner), not a prefix."""
    costs = [ModelCosts("big", 80 * MiB), ModelCosts("mid", 40 * MiB),
             ModelCosts("tiny", 10 * MiB)]
    size = np.array([c.size_bytes for c in costs])
    tiers = np.zeros((3, 1), dtype=np.int8)  # all want HOT
    probs = np.array([[1.0], [1.0], [0.001]], dtype=np.float32)
    out, evictions = _budgeted(tiers, probs, size, saved_of(costs), 100 * MiB)
    # Ranked mid (40), big (80: 120 > 100, evicted), tiny (10: 50 <= 100, kept). The HOT
    # models fill 50 of the 100 of host memory too (the worker's rule): big falls to DISK.
    assert out[:, 0].tolist() == [2, 0, 0] and evictions == 1


def test_budget_ranks_models_without_a_probability_by_seconds_per_byte() -> None:
    """p = 0 is floored as in the planner: among such models the smaller one (more seconds
    saved per byte) is kept, whatever the order of the rows."""
    costs = [ModelCosts("large", 300 * MiB), ModelCosts("small", 30 * MiB)]
    size = np.array([c.size_bytes for c in costs])
    out, _ = _budgeted(np.zeros((2, 1), dtype=np.int8), np.zeros((2, 1), dtype=np.float32),
                       size, saved_of(costs), 300 * MiB)
    # small kept HOT; large evicted, and small's host copy leaves it no host room: DISK.
    assert out[:, 0].tolist() == [2, 0]


def test_a_hot_model_fills_the_host_budget_too() -> None:
    """The worker's rule: the host memory left for models at HOST is what HOT ones leave."""
    costs = [ModelCosts("hot", 60 * MiB), ModelCosts("host", 60 * MiB)]
    size = np.array([c.size_bytes for c in costs])
    tiers = np.array([[0], [1]], dtype=np.int8)
    probs = np.ones((2, 1), dtype=np.float32)
    out, _ = _budgeted(tiers, probs, size, saved_of(costs), 100 * MiB)
    assert out[:, 0].tolist() == [0, 2]
    out, _ = _budgeted(tiers, probs, size, saved_of(costs), 120 * MiB)
    assert out[:, 0].tolist() == [0, 1]


def test_budget_agrees_with_the_planner_on_one_worker() -> None:
    """Per minute, the simulator's budget keeps at HOT and HOST exactly what the live
    planner places on one empty worker with the same budgets."""
    rng = random.Random(3)
    tier_of = {0: Tier.HOT, 1: Tier.HOST, 2: Tier.DISK}
    for _ in range(300):
        n = rng.randint(1, 12)
        costs = [ModelCosts(f"m{i}", rng.randint(1, 400) * MiB) for i in range(n)]
        size = np.array([c.size_bytes for c in costs])
        tiers = np.array([[rng.choice([0, 0, 1, 2])] for _ in range(n)], dtype=np.int8)
        probs = np.array([[rng.choice([0.0, 1.0, rng.random()])] for _ in range(n)],
                         dtype=np.float32)
        budget = rng.randint(0, 1200) * MiB
        out, _ = _budgeted(tiers, probs, size, saved_of(costs), budget)
        demands = [ModelDemand(c.model, tier_of[int(tiers[i, 0])], float(probs[i, 0]))
                   for i, c in enumerate(costs)]
        worker = WorkerState("w", budget, budget, 2**50)
        placed = plan(demands, [worker], {c.model: c for c in costs}).placement
        assert out[:, 0].tolist() == [
            {Tier.HOT: 0, Tier.HOST: 1, Tier.DISK: 2}[placed[c.model][1]] for c in costs]


def test_memory_cost_counts_every_minute_held_at_the_settings_prices() -> None:
    from warmstart.scheduler.costs import GiB, Prices

    trace = tiny()
    a, b = trace.memory_bytes().tolist()
    r = simulate(trace, ["fixed-10"], prices=Prices(gpu_gb_hour=3.0, host_gb_hour=0.5))
    m = r["policies"]["fixed-10"]
    # fixed-10 holds a HOT in minutes 1..15 and 21..29 (24), b in 11..20 (10); nothing at HOST.
    assert m["hot_cost_usd"] == pytest.approx((24 * a + 10 * b) / GiB * 3.0 / 60)
    assert m["host_cost_usd"] == 0 and m["memory_cost_usd"] == pytest.approx(m["hot_cost_usd"])


def test_hybrid_plus_host_is_hybrid_with_its_unloaded_models_at_host() -> None:
    r = simulate(tiny(), ["hybrid", "hybrid+host"], budget_bytes=60 * 2**20)
    plain, parked = r["policies"]["hybrid"], r["policies"]["hybrid+host"]
    # The same HOT decisions: the same cold starts and HOT waste ...
    assert parked["overall_cold_pct"] == plain["overall_cold_pct"]
    assert parked["waste_mb_min"] == plain["waste_mb_min"]
    # ... and what it unloads is held at HOST, reported and paid for separately.
    assert plain["host_waste_pct"] == 0 and parked["host_waste_pct"] > 0
    assert parked["host_cost_usd"] > 0 == plain["host_cost_usd"]
    # Under the budget, evicted models fall to HOST instead of DISK: fewer cold seconds.
    assert parked["cold_seconds"] <= plain["cold_seconds"]


def test_learning_minutes_are_replayed_but_not_measured() -> None:
    trace = tiny()  # a at 0, 5 and 20; b at 10 (4 requests)
    full = simulate(trace, ["fixed-10"])
    learned = simulate(trace, ["fixed-10"], learn_minutes=6)
    m = learned["policies"]["fixed-10"]
    assert learned["trace"]["learn_minutes"] == 6 and learned["trace"]["active_minutes"] == 2
    assert learned["trace"]["invocations"] == 5
    # Measured: a at 20 (15 idle minutes: cold under fixed-10) and b's first minute.
    assert m["cold_starts"] == 2 and m["overall_cold_pct"] == pytest.approx(100.0)
    assert full["policies"]["fixed-10"]["cold_starts"] == 3
    # Idle HOT minutes from minute 6 on: a 6..15 and 21..29 at 100 MB, b 11..20 at 50 MB.
    assert m["waste_mb_min"] == pytest.approx(19 * 100 + 10 * 50)
    assert m["waste_pct"] == pytest.approx(100.0)  # the reference is measured on the same minutes
    # a was fetched during the learning minutes: its cold start at 20 comes from DISK, not
    # REMOTE, so it costs less than on a trace where 20 is its first arrival.
    unseen = tiny()
    unseen.counts[0, [0, 5]] = 0
    first_at_20 = simulate(unseen, ["fixed-10"], learn_minutes=6)["policies"]["fixed-10"]
    assert first_at_20["cold_starts"] == 2
    assert m["cold_seconds"] < first_at_20["cold_seconds"]


@pytest.mark.parametrize("minutes", [-1, 30, 31])
def test_learning_minutes_must_leave_minutes_to_measure(minutes: int) -> None:
    with pytest.raises(SchedulerError, match=r"learn_minutes must be in \[0, 30\)"):
        simulate(tiny(), ["fixed-10"], learn_minutes=minutes)
