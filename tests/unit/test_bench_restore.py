"""The restore benchmark's harness: a tiny end-to-end run, and its arithmetic on plain numbers.

Benchmarks are measured, never asserted: these tests check that the harness runs, that every
path really loads the model (the probes compare outputs), and that the JSON has every key with
a positive finite number. They say nothing about how fast anything is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from warmstart.bench.report import format_ratio, format_seconds, ratio, write_json
from warmstart.bench.restore import BenchFiles, RestoreBenchConfig, summarise
from warmstart.cli import main

PAGE_CACHED_KEYS = (
    "warmstart_restore_s", "first_infer_s", "steady_infer_s", "torch_load_s",
    "torch_load_mmap_s", "safetensors_load_file_s", "tensorizer_s",
)  # fmt: skip
COLD_KEYS = ("warmstart_restore_s", "first_infer_s", "steady_infer_s", "raw_read_bytes_per_s")


def _positive_finite(value: object) -> bool:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return is_number and math.isfinite(value) and value > 0


def test_tiny_run_writes_every_key_and_cleans_up(tmp_path: Path) -> None:
    workdir, out = tmp_path / "work", tmp_path / "restore.json"
    args = ["bench", "restore", "--size-mb", "2", "--repeats", "1", "--steady-runs", "2",
            "--workdir", str(workdir), "--json", str(out)]  # fmt: skip

    result = CliRunner().invoke(main, args)

    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert _positive_finite(data["size_bytes"])
    for key in PAGE_CACHED_KEYS:
        assert _positive_finite(data["page_cached"][key]), key
    for key in COLD_KEYS:
        assert _positive_finite(data["cold_file"][key]), key
    for section in ("page_cached", "cold_file"):
        for key, value in data["ratios"][section].items():
            assert _positive_finite(value), (section, key)
    for name, target in data["targets"].items():
        assert isinstance(target["met"], bool), name
    env = data["environment"]
    assert env["repeats"] == 1 and env["torch"] and env["cpu_count"] >= 1
    assert list(workdir.iterdir()) == []  # the run's temp dir is gone
    assert "safetensors load_file" in result.output  # the table was printed


def _fake_probe(restore_s: float, first_s: float, steady_s: float) -> dict[str, float]:
    return {"setup_s": 1.0, "restore_s": restore_s, "first_infer_s": first_s, "steady_infer_s": steady_s}


def test_summary_takes_medians_and_computes_the_issue_ratios(tmp_path: Path) -> None:
    files = BenchFiles(
        weights_path=tmp_path / "w", manifest_path=tmp_path / "m", torch_path=tmp_path / "t",
        tensorizer_path=tmp_path / "z", inputs_path=tmp_path / "i", factory="a.b:c",
        factory_kwargs={}, size_bytes=1000, parameters=250, tensors=3,
    )  # fmt: skip
    cached = {
        "warmstart": [_fake_probe(0.01, 0.2, 0.1), _fake_probe(0.02, 0.2, 0.1), _fake_probe(0.9, 0.2, 0.1)],
        "torch_load": [_fake_probe(1.0, 0.1, 0.1)],
        "torch_load_mmap": [_fake_probe(0.04, 0.1, 0.1)],
        "safetensors_load_file": [_fake_probe(0.5, 0.1, 0.1)],
        "tensorizer": [_fake_probe(0.1, 0.1, 0.1)],
    }
    cold = [_fake_probe(1.2, 0.3, 0.1)]
    # 1000 bytes at 1000 B/s: the bound is 1 s of reading + 0.1 s of steady inference.
    result = summarise(files, cached, cold, [(1000, 1.0)], ([1.0], [0.0]), RestoreBenchConfig(repeats=3))

    assert result["page_cached"]["warmstart_restore_s"] == 0.02  # the median, not the mean
    page = result["ratios"]["page_cached"]
    assert page["torch_load_s/warmstart_restore_s"] == pytest.approx(50.0)
    assert page["torch_load_mmap_s/warmstart_restore_s"] == pytest.approx(2.0)
    assert page["fastest_baseline_s/warmstart_restore_s"] == pytest.approx(2.0)
    assert page["first_infer_s/steady_infer_s"] == pytest.approx(2.0)
    cold_ratios = result["ratios"]["cold_file"]
    assert result["cold_file"]["read_bound_s"] == pytest.approx(1.1)
    assert cold_ratios["first_answer_s/read_bound_s"] == pytest.approx(1.5 / 1.1)
    targets = result["targets"]
    assert targets["torch_load_speedup"]["met"] is True
    assert targets["warmstart_fastest"]["met"] is True
    assert targets["first_infer_overhead"]["met"] is False
    assert targets["cold_first_answer"]["met"] is False
    assert targets["cold_first_infer_overhead"]["met"] is False  # 0.3 s vs 0.1 s


def test_ratio_and_formatting_refuse_to_invent_values(tmp_path: Path) -> None:
    assert ratio(1.0, 0.0) is None and ratio(None, 1.0) is None and ratio(3.0, 2.0) == 1.5
    assert format_seconds(0.0123) == "12.3 ms" and format_seconds(None) == "—"
    assert format_ratio(54.21) == "54.2×" and format_ratio(1.234) == "1.23×"
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"bad": float("nan")})
