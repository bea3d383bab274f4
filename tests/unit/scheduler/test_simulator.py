"""Simulator metrics on a tiny hand-computable trace."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infra.errors import SchedulerError
from scheduler.simulator import simulate
from scheduler.traces import Trace


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
    assert set(r["policies"]) == {"fixed-10", "hybrid", "warmstart"}
    for m in r["policies"].values():
        assert 0 <= m["overall_cold_pct"] <= 100 and m["waste_pct"] >= 0
    with pytest.raises(SchedulerError, match="unknown policy"):
        simulate(tiny(), ["nope"])
    with pytest.raises(SchedulerError, match="budget_bytes"):
        simulate(tiny(), budget_bytes=0)


def test_plot_writes_a_png(tmp_path) -> None:
    from scheduler.plot import plot_tradeoff
    from scheduler.report import print_simulation
    from rich.console import Console

    r = simulate(tiny(), ["fixed-10", "fixed-5", "hybrid", "warmstart", "warmstart-5"])
    out = plot_tradeoff(r, tmp_path / "t.png")
    assert out.stat().st_size > 1000
    console = Console(record=True, width=200)
    print_simulation(r, console)
    assert "warmstart-5" in console.export_text()
