"""The serving benchmark's arithmetic on plain numbers: percentiles, ratios, targets.

(The harness itself, with redis-server and a worker, is tests/integration/test_bench_serve.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from warmstart.bench.serve import HEADLINE_KEYS, ServeBenchConfig, ServeFiles, percentile, summarise


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert percentile([2.0, 1.0], 0) == 1.0 and percentile([2.0, 1.0], 100) == 2.0
    with pytest.raises(ValueError):
        percentile([], 50)


def _files(tmp_path: Path) -> ServeFiles:
    return ServeFiles(
        store_url="file:///x", cache_dir=tmp_path, weights_path=tmp_path / "w", torch_path=tmp_path / "t",
        inputs={}, reference=None, factory="a.b:c", factory_kwargs={}, size_bytes=1000, parameters=250,
    )  # fmt: skip


def _warm(overhead_ms: float, forward_ms: float) -> dict[str, float]:
    e2e = (overhead_ms + forward_ms) / 1e3
    return {"e2e_s": e2e, "forward_s": forward_ms / 1e3, "overhead_s": overhead_ms / 1e3,
            "submit_s": 1e-4, "dispatch_s": 1e-4, "return_s": 1e-4}  # fmt: skip


def test_summary_computes_the_issue_ratios_and_targets(tmp_path: Path) -> None:
    warm = [_warm(3.0, 20.0)] * 99 + [_warm(53.0, 20.0)]  # one slow request
    echoes = [2.0e-3] * 100
    lazy = [{"lazy_cold_s": s, "restore_s": 0.1, "warmup_runs": 5} for s in (0.4, 0.2, 9.0)]
    naive = [3.0, 4.0, 5.0]

    raw = [0.5, 0.44, 0.3]
    result = summarise(_files(tmp_path), warm, echoes, lazy, naive, ServeBenchConfig(requests=100, cold_repeats=3), raw)

    assert set(HEADLINE_KEYS) <= set(result)
    assert result["raw_lazy_cold_s"] == 0.44
    assert result["ratios"]["raw_lazy_cold_s/lazy_cold_s"] == pytest.approx(1.1)
    assert result["targets"]["raw_lazy_cold"]["met"] is True
    assert result["warm_overhead_p50_ms"] == pytest.approx(3.0)
    assert result["warm_overhead_p99_ms"] == pytest.approx(3.0 + 50 * 0.01)  # interpolated
    assert result["echo_p50_ms"] == pytest.approx(2.0)
    assert result["lazy_cold_s"] == 0.4 and result["naive_cold_s"] == 4.0  # medians
    ratios = result["ratios"]
    assert ratios["warm_overhead_p50_ms/echo_p50_ms"] == pytest.approx(1.5)
    assert ratios["naive_cold_s/lazy_cold_s"] == pytest.approx(10.0)
    targets = result["targets"]
    assert targets["warm_overhead_p50"]["met"] is False
    assert targets["warm_overhead_p99"]["met"] is True
    assert targets["lazy_cold_speedup"]["met"] is True  # the bound is inclusive
    assert result["cold"]["lazy_breakdown_s"]["restore_s"] == pytest.approx(0.1)
    assert result["cold"]["lazy_breakdown_s"]["gate_to_forward_s"] is None  # not published
