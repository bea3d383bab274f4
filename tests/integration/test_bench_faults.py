"""The fault benchmark's harness end to end, with tiny numbers: its own redis-server and S3,
real worker and beat processes, every fault injected once.

Benchmarks are measured, never asserted: this checks that the harness injects each fault,
replaces what it killed, accounts for every request exactly once, samples memory, writes
every key and cleans up. It says nothing about how many requests the faults cost.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from warmstart.bench.faults import FAULTS, HEADLINE_KEYS, TARGETS
from warmstart.cli import main

pytestmark = pytest.mark.integration

#: The event each fault starts with in the timeline.
INJECTED = {
    "kill-worker": "SIGKILL",
    "restart-redis": "redis-server stopped",
    "kill-beat": "SIGKILL to the lease holder",
    "term-worker": "SIGTERM",
    "s3-outage": "S3 stopped",
}


@pytest.mark.timeout(240)
def test_tiny_run_injects_every_fault_and_accounts_for_every_request(tmp_path: Path) -> None:
    workdir, out = tmp_path / "work", tmp_path / "faults.json"
    args = ["bench", "faults", "--requests", "120", "--rate", "10", "--s3-outage-s", "2", "--redis-down-s", "0.5",
            "--answer-timeout-s", "15", "--workdir", str(workdir), "--json", str(out)]  # fmt: skip

    result = CliRunner().invoke(main, args)

    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(HEADLINE_KEYS) <= set(data)
    outcomes = ("answered_ok", "wrong", "typed_errors", "untyped_errors", "lost", "unsent")
    assert data["requests"] == 120 == sum(data[k] for k in outcomes)
    assert data["counts"]["sent"] == 120 - data["unsent"] and data["answered_ok"] > 0
    assert sum(p["requests"] for p in data["phases"]) == 120

    first_event = {}
    for event in data["timeline"]:  # (besides any "unplanned-exit": a process that died on its own)
        if event["fault"] in FAULTS:
            first_event.setdefault(event["fault"], event["event"])
    assert first_event == INJECTED and set(INJECTED) == set(FAULTS)
    republished = [e for e in data["timeline"] if e["event"] == "example models published again"]
    assert len(republished) == 1 and republished[0]["same_bytes"] is True

    workers = [p for p in data["processes"] if p["role"] == "worker"]
    beats = [p for p in data["processes"] if p["role"] == "beat"]
    assert len(workers) == 4 and len(beats) == 3  # two of each, and a replacement per kill or stop
    assert sorted(p["signalled"] or "" for p in workers) == ["", "", "SIGKILL", "SIGTERM"]
    assert [p["exit_code"] for p in workers + beats if p["signalled"] == "SIGKILL"] == [-9, -9]

    assert any(s["redis_used_bytes"] for s in data["samples"]["memory"])
    assert data["redis_peak_bytes"] > 0 and data["worker_peak_rss_bytes"] > 0
    assert set(data["targets"]) == set(TARGETS)
    assert all(t["met"] in (True, False, None) for t in data["targets"].values())
    assert data["conditions"]["rate_per_s"] == 10 and data["conditions"]["environment"]["cpu_count"] >= 1
    assert list(workdir.iterdir()) == []  # the run's temp dir is gone
    assert "Fault timeline" in result.output  # the tables were printed
