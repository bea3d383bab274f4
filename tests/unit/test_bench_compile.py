"""`warmstart bench compile`'s summary: medians per path, ratios to the empty cache, and the
target judged on the host cache's ratio (pure, plain values)."""

from __future__ import annotations

from warmstart.bench.compile import PATHS, compile_tables, summarise_compile


def _sample(path: str, seconds: float, new_batch_ms: tuple[float, ...] = (1.0, 2.0, 1.5)) -> dict:
    compiled = None if path == "eager" else {"seconds": seconds * 0.9, "source": "host cache"}
    return {"path": path, "time_to_hot_s": seconds, "compile": compiled, "max_abs_error": 0.0,
            "new_batch_first_request_ms": dict(zip(("1", "7", "33"), new_batch_ms))}


def test_the_target_is_the_host_cache_against_the_empty_cache() -> None:
    times = {"compiled_empty": [4.0, 5.0, 4.5], "compiled_host_cache": [0.4, 0.9, 0.5],
             "compiled_signed_artifact": [3.0, 3.2, 3.1], "eager": [0.1, 0.1, 0.1]}  # fmt: skip
    samples = {p: [_sample(p, t) for t in times[p]] for p in PATHS}
    summary = summarise_compile(samples)
    assert summary["medians_s"]["compiled_host_cache"] == 0.5
    assert abs(summary["ratios"]["compiled_host_cache/compiled_empty"] - 0.5 / 4.5) < 1e-12
    assert summary["target"]["met"]

    slow = {**samples, "compiled_host_cache": [_sample("compiled_host_cache", 1.0)] * 3}
    assert not summarise_compile(slow)["target"]["met"]  # 1.0 / 4.5 > 1/5


def test_the_table_has_a_row_per_path_and_says_whether_the_target_was_met() -> None:
    samples = {p: [_sample(p, 1.0 if p == "compiled_empty" else 0.1)] for p in PATHS}
    result = {**summarise_compile(samples), "samples": samples, "repeats": 1, "model": {"parameters": 10}}
    table = compile_tables(result)[0]
    assert table.row_count == len(PATHS) and "met" in str(table.caption)


def test_the_slowest_first_request_at_a_new_batch_size_is_reported_per_path() -> None:
    samples = {p: [_sample(p, 1.0), _sample(p, 1.0, (3000.0, 1.0, 1.0)), _sample(p, 1.0, (4.0, 5.0, 6.0))]
               for p in PATHS}
    summary = summarise_compile(samples)
    assert summary["new_batch_first_request_ms"]["eager"] == 6.0  # median of 2.0, 3000.0, 6.0
    old = {p: [{k: v for k, v in s.items() if k != "new_batch_first_request_ms"} for s in samples[p]] for p in PATHS}
    assert summarise_compile(old)["new_batch_first_request_ms"] == {}  # samples from before: absent
