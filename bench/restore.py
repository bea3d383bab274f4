"""``warmstart bench restore``: how fast a snapshot becomes a model that answers.

Setup (untimed): build the transformer-encoder example of about ``size_mb`` MiB, publish it
to a local file store, fetch it into a snapshot cache as a worker would, and write the same
weights for each baseline (``torch.save``, tensorizer). Then every path is measured in its own
fresh process (:mod:`warmstart.bench.probe`), ``repeats`` times, interleaved so that a burst of noise
hits every path alike, and the median is reported:

* page-cached: each file is read once right before its probe, so restore costs no disk I/O;
  warmstart's restore, first and steady inference, and four baselines side by side.
* cold file: the snapshot's pages are evicted (``os.sync()`` then ``POSIX_FADV_DONTNEED``,
  checked with ``mincore``) before warmstart's probe, and the raw sequential read throughput of
  the same file is measured after the same eviction, giving the bound that the time to the
  first answer is compared with.

See ``docs/benchmarks.md`` for what is and is not inside the timed region.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmstart.bench import pagecache
from warmstart.bench.probe import PATHS
from warmstart.bench.report import (
    environment,
    format_bytes,
    format_ratio,
    format_seconds,
    format_target,
    format_throughput,
    make_table,
    median,
    ratio,
)
from warmstart.infra.errors import WarmstartError

#: JSON key of each baseline's page-cached restore time, by probe path.
BASELINE_KEYS = {
    "torch_load": "torch_load_s",
    "torch_load_mmap": "torch_load_mmap_s",
    "safetensors_load_file": "safetensors_load_file_s",
    "tensorizer": "tensorizer_s",
}

#: The issue's targets (reported, never asserted): name -> ((section, ratio key), bound, op),
#: op one of "ge" (>=), "gt" (>), "le" (<=).
TARGETS = {
    "torch_load_speedup": (("page_cached", "torch_load_s/warmstart_restore_s"), 50.0, "ge"),
    "warmstart_fastest": (("page_cached", "fastest_baseline_s/warmstart_restore_s"), 1.0, "gt"),
    "first_infer_overhead": (("page_cached", "first_infer_s/steady_infer_s"), 1.5, "le"),
    "cold_first_infer_overhead": (("cold_file", "first_infer_s/steady_infer_s"), 1.5, "le"),
    "cold_first_answer": (("cold_file", "first_answer_s/read_bound_s"), 1.25, "le"),
}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RestoreBenchConfig:
    """One run of the restore benchmark.

    Attributes:
        size_mb: target size of the model's float32 weights, MiB.
        repeats: fresh processes per path and cache state; the median is reported.
        steady_runs: forward passes after the first, whose median is the steady latency.
        workdir: parent of the run's temporary directory (None: the system's temp dir).
        threads: torch intra-op threads in every probe (None: torch's default, one per
            core). One thread avoids OpenMP's stalls when other processes share the cores.
        probe_timeout_s: wall-clock limit of one probe process.
    """

    size_mb: float = 256
    repeats: int = 3
    steady_runs: int = 5
    workdir: Path | None = None
    threads: int | None = None
    probe_timeout_s: float = 600.0


@dataclass(frozen=True)
class BenchFiles:
    """What setup leaves on disk for the probes."""

    weights_path: Path  # model.safetensors in the snapshot cache, as a worker has it
    manifest_path: Path
    torch_path: Path
    tensorizer_path: Path
    inputs_path: Path  # sample inputs and the reference outputs
    factory: str
    factory_kwargs: dict[str, Any]
    size_bytes: int
    parameters: int
    tensors: int

    def file_for(self, path: str) -> Path:
        """The file that a probe path loads."""
        return {
            "warmstart": self.weights_path,
            "safetensors_load_file": self.weights_path,
            "torch_load": self.torch_path,
            "torch_load_mmap": self.torch_path,
            "tensorizer": self.tensorizer_path,
        }[path]


def prepare_files(root: Path, size_mb: float) -> BenchFiles:
    """Build, publish and fetch the example model, and write the baselines' files.

    Args:
        root: an empty directory that the run owns.
        size_mb: target size of the float32 weights, MiB.

    Returns:
        The paths and facts the probes need.
    """
    import torch
    from safetensors.torch import save_file
    from tensorizer import TensorSerializer

    from warmstart.snapshot.cache import SnapshotCache
    from warmstart.snapshot.examples import transformer_example
    from warmstart.snapshot.publish import publish_module
    from warmstart.snapshot.stores import LocalStore

    torch.manual_seed(0)
    example = transformer_example(size_mb)
    module = example.build()
    inputs = example.golden_inputs(seed=0, batch=2)
    with torch.inference_mode():
        reference = module(**inputs)

    store = LocalStore(root / "store")
    factory = example.architecture.factory
    (root / "publish-tmp").mkdir()
    manifest = publish_module(
        store, example.name, "v1", module, example.architecture, example.inputs,
        golden_inputs=inputs, show_progress=False, allowed_architectures=(factory,),
        workdir=root / "publish-tmp",
    )  # fmt: skip
    size_bytes = manifest.weights.size_bytes
    cache = SnapshotCache(root / "cache", budget_bytes=4 * size_bytes + 64 * 1024 * 1024)
    local = cache.fetch(store, manifest)

    torch_path = root / "model.pt"
    torch.save(module.state_dict(), torch_path)
    tensorizer_path = root / "model.tensors"
    serializer = TensorSerializer(str(tensorizer_path))
    serializer.write_module(module)
    serializer.close()
    inputs_path = root / "inputs.safetensors"
    save_file(
        {**{f"input.{k}": v.contiguous() for k, v in inputs.items()}, "output.0": reference.contiguous()},
        str(inputs_path),
    )
    return BenchFiles(
        weights_path=Path(local.weights_path),
        manifest_path=Path(local.manifest_path),
        torch_path=torch_path,
        tensorizer_path=tensorizer_path,
        inputs_path=inputs_path,
        factory=manifest.architecture.factory,
        factory_kwargs=dict(manifest.architecture.kwargs),
        size_bytes=size_bytes,
        parameters=sum(p.numel() for p in module.parameters()),
        tensors=len(manifest.weights.tensors),
    )


def run_probe(files: BenchFiles, path: str, config: RestoreBenchConfig) -> dict[str, Any]:
    """Measure one path in a fresh Python process (no state shared with earlier probes).

    Raises:
        WarmstartError: the probe failed, timed out, printed no JSON, or its model's output
            disagreed with the reference (a wrong load must not post a time).
    """
    spec = {
        "path": path,
        "weights_path": str(files.file_for(path)),
        "manifest_path": str(files.manifest_path),
        "inputs_path": str(files.inputs_path),
        "factory": files.factory,
        "factory_kwargs": files.factory_kwargs,
        "steady_runs": config.steady_runs,
        "threads": config.threads,
    }
    repo_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "warmstart.bench.probe", json.dumps(spec)],
            capture_output=True, text=True, timeout=config.probe_timeout_s, env=env, cwd=repo_root,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        raise WarmstartError(
            f"probe {path!r} ran over {config.probe_timeout_s:g} s; use a smaller --size-mb or "
            "raise the timeout"
        ) from e
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise WarmstartError(f"probe {path!r} failed with exit status {done.returncode}:\n{tail}")
    try:
        result = json.loads(lines[-1])
    except ValueError as e:
        raise WarmstartError(f"probe {path!r} printed no JSON result: {lines[-1][:200]!r}") from e
    if not result.get("output_matches"):
        raise WarmstartError(
            f"probe {path!r} restored a model whose output differs from the reference (max abs "
            f"error {result.get('max_abs_error')}): that path loaded the wrong weights"
        )
    return result


def _summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of one path's probes, with the raw samples kept for the JSON."""
    keys = ("setup_s", "restore_s", "first_infer_s", "steady_infer_s")
    summary: dict[str, Any] = {key: median(s[key] for s in samples) for key in keys}
    summary["samples"] = {key: [s[key] for s in samples] for key in keys}
    # CPU time, preemptions and page faults per timed region, to tell noise from cost.
    summary["diagnostics"] = [
        {region: s[region] for region in ("restore_usage", "first_infer_usage") if region in s} for s in samples
    ]
    return summary


def _compare(value: float | None, bound: float, op: str) -> bool | None:
    if value is None:
        return None
    return {"ge": value >= bound, "gt": value > bound, "le": value <= bound}[op]


def summarise(
    files: BenchFiles,
    cached: dict[str, list[dict[str, Any]]],
    cold: list[dict[str, Any]],
    raw_reads: list[tuple[int, float]],
    residency: tuple[list[float | None], list[float | None]],
    config: RestoreBenchConfig,
) -> dict[str, Any]:
    """Turn the probes' samples into the benchmark's JSON result (medians, ratios, targets).

    Args:
        files: what setup wrote.
        cached: page-cached probe results by path, one per repeat.
        cold: cold-file warmstart probe results, one per repeat.
        raw_reads: ``(bytes, seconds)`` of each raw sequential read after eviction.
        residency: the fraction of the probed file's pages resident right after each warm-up,
            and right after each eviction (None where ``mincore`` is unavailable).
        config: the run's knobs, recorded in ``environment``.
    """
    resident_after_warm, resident_after_evict = residency
    paths_cached = {path: _summarise(samples) for path, samples in cached.items()}
    paths_cold = {"warmstart": _summarise(cold)}
    ws = paths_cached["warmstart"]
    page_cached: dict[str, Any] = {
        "warmstart_restore_s": ws["restore_s"],
        "first_infer_s": ws["first_infer_s"],
        "steady_infer_s": ws["steady_infer_s"],
    }
    for path, key in BASELINE_KEYS.items():
        page_cached[key] = paths_cached[path]["restore_s"]
    page_cached["first_answer_s"] = ws["restore_s"] + ws["first_infer_s"]
    known_warm = [f for f in resident_after_warm if f is not None]
    page_cached["resident_fraction_after_warm"] = min(known_warm) if known_warm else None

    cw = paths_cold["warmstart"]
    raw_bytes_per_s = median(n / s for n, s in raw_reads)
    known_resident = [f for f in resident_after_evict if f is not None]
    cold_file: dict[str, Any] = {
        "warmstart_restore_s": cw["restore_s"],
        "first_infer_s": cw["first_infer_s"],
        "steady_infer_s": cw["steady_infer_s"],
        "raw_read_bytes_per_s": raw_bytes_per_s,
        "first_answer_s": cw["restore_s"] + cw["first_infer_s"],
        "raw_read_s": files.size_bytes / raw_bytes_per_s,
        "resident_fraction_after_evict": max(known_resident) if known_resident else None,
    }
    # The bound on the time to the first answer: one raw read plus one inference.
    cold_file["read_bound_s"] = cold_file["raw_read_s"] + cw["steady_infer_s"]

    speedups = {
        f"{key}/warmstart_restore_s": ratio(page_cached[key], ws["restore_s"])
        for key in BASELINE_KEYS.values()
    }
    known = [v for v in speedups.values() if v is not None]
    ratios = {
        "page_cached": {
            **speedups,
            "fastest_baseline_s/warmstart_restore_s": min(known) if known else None,
            "first_infer_s/steady_infer_s": ratio(ws["first_infer_s"], ws["steady_infer_s"]),
        },
        "cold_file": {
            "first_infer_s/steady_infer_s": ratio(cw["first_infer_s"], cw["steady_infer_s"]),
            "first_answer_s/read_bound_s": ratio(cold_file["first_answer_s"], cold_file["read_bound_s"]),
        },
    }
    threads_seen = [s.get("torch_threads", 0) for samples in cached.values() for s in samples]
    targets = {}
    for name, ((section, key), bound, op) in TARGETS.items():
        value = ratios[section][key]
        targets[name] = {"ratio": f"{section}.{key}", "value": value, "bound": bound, "op": op,
                         "met": _compare(value, bound, op)}  # fmt: skip
    return {
        "benchmark": "restore",
        "size_bytes": files.size_bytes,
        "model": {"factory": files.factory, "kwargs": files.factory_kwargs,
                  "parameters": files.parameters, "tensors": files.tensors},  # fmt: skip
        "page_cached": page_cached,
        "cold_file": cold_file,
        "ratios": ratios,
        "targets": targets,
        "paths": {"page_cached": paths_cached, "cold_file": paths_cold},
        "environment": environment(
            repeats=config.repeats, steady_runs=config.steady_runs, size_mb=config.size_mb,
            probe_torch_threads=max(threads_seen, default=0) or None,
        ),
    }


def run_restore_benchmark(config: RestoreBenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run the whole benchmark in a temporary directory, removed afterwards.

    Args:
        config: sizes, repeat counts and where to work.
        progress: called with one line per step (None: silent).

    Returns:
        The JSON result: ``size_bytes``, ``page_cached``, ``cold_file``, ``ratios``,
        ``targets``, per-path medians and samples under ``paths``, and ``environment``.

    Raises:
        WarmstartError: a probe failed or restored wrong weights.
        OSError: the page cache cannot be controlled here (not Linux).
    """
    say = progress or (lambda _line: None)
    if config.workdir is not None:
        Path(config.workdir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="warmstart-bench-restore-", dir=config.workdir))
    try:
        say(f"setup: building, publishing and fetching a ~{config.size_mb:g} MiB model in {root}")
        files = prepare_files(root, config.size_mb)
        say(f"setup: {format_bytes(files.size_bytes)} in {files.tensors} tensors")
        cached: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
        cold: list[dict[str, Any]] = []
        raw_reads: list[tuple[int, float]] = []
        resident: list[float | None] = []
        resident_warm: list[float | None] = []
        for repeat in range(1, config.repeats + 1):
            for path in PATHS:
                pagecache.warm(files.file_for(path))
                resident_warm.append(pagecache.resident_fraction(files.file_for(path)))
                result = run_probe(files, path, config)
                cached[path].append(result)
                say(f"[{repeat}/{config.repeats}] page-cached {path}: {_brief(result)}")
            pagecache.evict([files.weights_path])
            raw_reads.append(pagecache.read_throughput(files.weights_path))
            pagecache.evict([files.weights_path])
            resident.append(pagecache.resident_fraction(files.weights_path))
            if (resident[-1] or 0.0) > 0.01:
                say(f"warning: {resident[-1]:.0%} of the snapshot stayed cached after eviction; "
                    "the cold-file numbers are not cold (is --workdir on tmpfs?)")  # fmt: skip
            result = run_probe(files, "warmstart", config)
            cold.append(result)
            say(f"[{repeat}/{config.repeats}] cold-file warmstart: {_brief(result)}")
        return summarise(files, cached, cold, raw_reads, (resident_warm, resident), config)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _brief(result: dict[str, Any]) -> str:
    return (
        f"restore {format_seconds(result['restore_s'])}, 1st infer "
        f"{format_seconds(result['first_infer_s'])}, steady {format_seconds(result['steady_infer_s'])}"
    )


# --- the table ------------------------------------------------------------------------------

_LABELS = {
    "warmstart": "warmstart",
    "torch_load": "torch.load + init",
    "torch_load_mmap": "torch.load mmap + meta",
    "safetensors_load_file": "safetensors load_file + init",
    "tensorizer": "tensorizer",
}


def restore_tables(result: dict[str, Any]) -> list[Any]:
    """The rich tables of a result: page-cached paths, the cold file, and the targets."""
    env = result["environment"]
    caption = (
        f"median of {env['repeats']} fresh processes; steady = median of {env['steady_runs']} runs; "
        f"torch {env['torch']}, {env['usable_cpus']} CPUs, {env['probe_torch_threads']} torch threads; "
        f"pages resident after warm-up: {_fraction(result['page_cached']['resident_fraction_after_warm'])}"
    )
    ws_restore = result["page_cached"]["warmstart_restore_s"]
    rows = []
    for path, row in result["paths"]["page_cached"].items():
        rows.append([
            _LABELS[path], format_seconds(row["restore_s"]), format_seconds(row["first_infer_s"]),
            format_seconds(row["steady_infer_s"]),
            format_seconds(row["restore_s"] + row["first_infer_s"]),
            format_ratio(ratio(row["restore_s"], ws_restore)),
        ])  # fmt: skip
    cached = make_table(
        f"Restore, page-cached: {format_bytes(result['size_bytes'])} transformer encoder",
        ["path", "restore", "1st infer", "steady infer", "1st answer", "restore ÷ warmstart"],
        rows,
        caption=caption,
    )
    cold = result["cold_file"]
    ratios = result["ratios"]["cold_file"]
    cold_table = make_table(
        "Restore, cold file (evicted from the page cache)",
        ["measure", "value"],
        [
            ["warmstart restore", format_seconds(cold["warmstart_restore_s"])],
            ["first infer", format_seconds(cold["first_infer_s"])],
            ["steady infer", format_seconds(cold["steady_infer_s"])],
            ["time to first answer (restore + first infer)", format_seconds(cold["first_answer_s"])],
            ["raw sequential read", format_throughput(cold["raw_read_bytes_per_s"])],
            ["bound: size / raw read + steady infer", format_seconds(cold["read_bound_s"])],
            ["first answer / bound", format_ratio(ratios["first_answer_s/read_bound_s"])],
            ["first infer / steady infer", format_ratio(ratios["first_infer_s/steady_infer_s"])],
            ["pages resident after eviction", _fraction(cold["resident_fraction_after_evict"])],
        ],
    )
    target_rows = []
    symbols = {"ge": "≥", "gt": ">", "le": "≤"}
    for name, t in result["targets"].items():
        target_rows.append(
            [_TARGET_LABELS[name], format_ratio(t["value"]), f"{symbols[t['op']]} {t['bound']:g}",
             format_target(t["met"])]  # fmt: skip
        )
    targets = make_table(
        "Targets (reported, not asserted)", ["target", "value", "bound", "verdict"], target_rows
    )
    return [cached, cold_table, targets]


_TARGET_LABELS = {
    "torch_load_speedup": "page-cached: torch.load ÷ warmstart restore",
    "warmstart_fastest": "page-cached: fastest baseline ÷ warmstart restore",
    "first_infer_overhead": "page-cached: 1st infer ÷ steady infer",
    "cold_first_infer_overhead": "cold: 1st infer ÷ steady infer",
    "cold_first_answer": "cold: 1st answer ÷ (raw read + steady infer)",
}


def _fraction(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"
