"""`warmstart simulate` and `warmstart advise` on a small trace written by the test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def write_trace(root: Path) -> Path:
    """Three functions over 120 minutes: every minute, every 10 minutes, and twice."""
    minutes = list(range(1, 121))
    rows = {
        "busy": [1] * 120,
        "periodic": [1 if m % 10 == 0 else 0 for m in minutes],
        "rare": [1 if m in (5, 100) else 0 for m in minutes],
    }
    lines = ["HashOwner,HashApp,HashFunction,Trigger," + ",".join(map(str, minutes))]
    lines += [f"o,a-{n},{n},http," + ",".join(map(str, c)) for n, c in rows.items()]
    (root / "invocations.csv").write_text("\n".join(lines) + "\n")
    (root / "memory.csv").write_text("HashFunction,SampleCount,AverageAllocatedMb\nbusy,1,512\nperiodic,1,256\nrare,1,128\n")
    return root


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "warmstart.cli", *args], capture_output=True, text=True, timeout=120)


def test_simulate_writes_json_and_plot(tmp_path: Path) -> None:
    trace = write_trace(tmp_path)
    result = run("simulate", str(trace), "--json", str(tmp_path / "sim.json"), "--plot", str(tmp_path / "sim.png"),
                 "--headroom")
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "sim.json").read_text())
    policies = written["policies"]
    headroom = written["headroom"]["policies"]
    assert [entry["policy"] for entry in headroom] == ["warmstart"]
    rows = headroom[0]["rows"]
    assert rows["warmstart"]["overall_cold_pct"] == pytest.approx(policies["warmstart"]["overall_cold_pct"])
    # No row goes below the first-arrival floor; on this trace hindsight beats learning.
    floor = written["headroom"]["first_arrival_floor_pct"]
    assert floor <= rows["known-hazard"]["overall_cold_pct"] <= rows["warmstart"]["overall_cold_pct"]
    assert "headroom of warmstart" in result.stdout
    assert {"fixed-10", "hybrid", "warmstart"} <= set(policies)
    for metrics in policies.values():
        assert {"overall_cold_pct", "q3_cold_pct", "waste_pct", "cold_seconds"} <= set(metrics)
    assert policies["fixed-10"]["waste_pct"] == pytest.approx(100.0)
    assert (tmp_path / "sim.png").stat().st_size > 0
    assert "warmstart" in result.stdout


def test_advise_recommends_per_model(tmp_path: Path) -> None:
    result = run("advise", "--trace", str(write_trace(tmp_path)), "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["model"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"busy", "periodic", "rare"}
    assert rows["busy"]["arrivals_per_day"] > rows["rare"]["arrivals_per_day"]
    assert rows["busy"]["recommendation"]["mode"] == "eager"


def test_simulate_refuses_a_bad_trace(tmp_path: Path) -> None:
    (tmp_path / "invocations.csv").write_text("not,a,trace\n1,2,3\n")
    result = run("simulate", str(tmp_path))
    assert result.returncode == 2 and "TraceFormatError" in result.stderr


def test_simulate_measures_after_learning_minutes(tmp_path: Path) -> None:
    trace = write_trace(tmp_path)
    result = run("simulate", str(trace), "--policy", "warmstart", "--learn-minutes", "60",
                 "--json", str(tmp_path / "sim.json"))
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "sim.json").read_text())
    assert written["trace"]["learn_minutes"] == 60
    assert written["trace"]["active_minutes"] == 60 + 6 + 1  # busy, periodic, rare after 60
    assert "after 60 learning ones" in result.stdout
    too_long = run("simulate", str(trace), "--learn-minutes", "120")
    assert too_long.returncode == 2 and "learn_minutes must be in [0, 120)" in too_long.stderr
