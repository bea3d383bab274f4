"""The serving benchmark's harness end to end, at a tiny size: its own redis-server, a real
worker process, the naive probe process.

Benchmarks are measured, never asserted: this checks that the harness runs, that every path
answers the right output (the harness compares each with a reference), that the JSON has
every key with a positive finite number, and that nothing is left behind. It says nothing
about how fast anything is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from warmstart.bench.serve import HEADLINE_KEYS, TARGETS
from warmstart.cli import main

pytestmark = pytest.mark.integration


def _positive_finite(value: object) -> bool:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return is_number and math.isfinite(value) and value > 0


@pytest.mark.timeout(120)
def test_tiny_run_writes_every_key_and_cleans_up(tmp_path: Path) -> None:
    workdir, out = tmp_path / "work", tmp_path / "serve.json"
    args = ["bench", "serve", "--size-mb", "2", "--requests", "20", "--cold-repeats", "1",
            "--warmup-requests", "2", "--workdir", str(workdir), "--json", str(out)]  # fmt: skip

    result = CliRunner().invoke(main, args)

    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    for key in HEADLINE_KEYS:
        assert _positive_finite(data[key]), key
    assert set(data["ratios"]) == {key for key, _, _ in TARGETS.values()}
    for key, value in data["ratios"].items():
        assert _positive_finite(value), key
    for name, target in data["targets"].items():
        assert isinstance(target["met"], bool), name
    assert data["warm"]["requests"] == 20 and len(data["samples"]["echo_s"]) == 20
    assert len(data["cold"]["lazy_cold_samples_s"]) == len(data["cold"]["naive_cold_samples_s"]) == 1
    env = data["environment"]
    assert env["requests"] == 20 and env["torch"] and env["cpu_count"] >= 1
    assert list(workdir.iterdir()) == []  # the run's temp dir is gone
    assert "bare echo round trip" in result.output  # the table was printed
