"""``warmstart bench serve``: what warmstart adds to a request, warm and cold.

One run starts its own redis-server and one worker process (dev profile, CPU) and measures,
side by side:

* **warm path**: ``requests`` sequential inferences through :class:`warmstart.workers.client.Client`
  (one in flight), each one's end-to-end latency minus the model forward time the worker
  measured (``forward_ms``), against a bare Celery round trip: the ``warmstart.echo`` task
  sent to the model's own ``infer.<model>`` queue, so that both go through the same queue,
  consumer, prefetch and acknowledgement. Echo and inference requests alternate (their order
  flipping every pair), so drift on the machine hits both alike.
* **lazy cold path**: a request for a model the worker does not hold, its snapshot already in
  the worker's cache and page cache: enqueue to answer, the client's lazy pre-warm included.
  Between repeats the model is demoted to DISK (not REMOTE, which would evict the cache).
  Against it, the naive cold start (:mod:`warmstart.bench.serve_probe`): a fresh process that imports
  torch, ``torch.load``\\ s a state dict, builds the model and answers once.

Everything (temp dir, redis-server, worker, probe processes) is removed even on error or
Ctrl-C. See ``docs/benchmarks.md`` for what is inside each timed region.
"""

from __future__ import annotations

import gc
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmstart.bench import pagecache
from warmstart.bench.report import (
    environment,
    format_bytes,
    format_ratio,
    format_seconds,
    format_target,
    make_table,
    median,
    ratio,
)
from warmstart.bench.serve_paths import (
    MODEL,
    WORKER,
    Progress,
    answer_output,
    check_output,
    demote,
    make_hot,
    measure_lazy_cold,
    measure_naive_cold,
    measure_warm,
    time_inference,
    warm_client,
)
from warmstart.infra.errors import WarmstartError

MiB = 1024 * 1024

#: The issue's targets (reported, never asserted): name -> (ratio key, bound, op).
TARGETS = {
    "warm_overhead_p50": ("warm_overhead_p50_ms/echo_p50_ms", 1.3, "le"),
    "warm_overhead_p99": ("warm_overhead_p99_ms/echo_p99_ms", 2.0, "le"),
    "lazy_cold_speedup": ("naive_cold_s/lazy_cold_s", 10.0, "ge"),
    "raw_lazy_cold": ("raw_lazy_cold_s/lazy_cold_s", 1.2, "le"),
}

#: The JSON's headline keys: the targets' operands.
HEADLINE_KEYS = (
    "warm_overhead_p50_ms", "warm_overhead_p99_ms", "echo_p50_ms", "echo_p99_ms",
    "lazy_cold_s", "naive_cold_s", "raw_lazy_cold_s",
)  # fmt: skip


@dataclass(frozen=True)
class ServeBenchConfig:
    """One run of the serving benchmark.

    Attributes:
        size_mb: target size of the model's float32 weights, MiB.
        requests: timed inferences on the warm path (as many echoes are interleaved).
        cold_repeats: lazy cold starts, and as many naive ones; the median is reported.
        warmup_requests: untimed inference/echo pairs before the timed ones (client and
            worker connections, allocator, the first requests' one-time costs).
        concurrency: task threads of the worker.
        workdir: parent of the run's temporary directory (None: the system temp dir).
        answer_timeout_s: the longest wait for any one answer.
    """

    size_mb: float = 256
    requests: int = 500
    cold_repeats: int = 3
    warmup_requests: int = 20
    concurrency: int = 2
    workdir: Path | None = None
    answer_timeout_s: float = 300.0


@dataclass(frozen=True)
class ServeFiles:
    """What setup leaves behind: a published, pre-fetched model and the naive baseline's file."""

    store_url: str
    cache_dir: Path
    weights_path: Path  # model.safetensors in the worker's cache
    torch_path: Path  # torch.save(state_dict) of the same weights
    inputs: dict[str, Any]  # name -> tensor: the request every path answers
    reference: Any  # the model's output on ``inputs`` (a tensor)
    factory: str
    factory_kwargs: dict[str, Any]
    size_bytes: int
    parameters: int


# --- setup ----------------------------------------------------------------------------------


def prepare_files(root: Path, size_mb: float) -> ServeFiles:
    """Build and publish the example encoder, pre-fetch it into the worker's cache as the
    worker itself would, and write the naive baseline's ``torch.save`` file.

    Args:
        root: an empty directory the run owns; ``store/`` and ``cache/`` are created in it.
        size_mb: target size of the float32 weights, MiB.
    """
    import torch

    from warmstart.snapshot.cache import SnapshotCache
    from warmstart.snapshot.catalog import read_manifest
    from warmstart.snapshot.examples import transformer_example
    from warmstart.snapshot.publish import publish_module
    from warmstart.snapshot.stores import open_store_url

    torch.manual_seed(0)
    example = transformer_example(size_mb, name=MODEL)
    module = example.build()
    inputs = example.golden_inputs(seed=1, batch=2)
    with torch.inference_mode():
        reference = module(**inputs)
    store_url = f"file://{root / 'store'}"
    store = open_store_url(store_url)
    factory = example.architecture.factory
    (root / "publish-tmp").mkdir()
    published = publish_module(
        store, MODEL, "v1", module, example.architecture, example.inputs,
        golden_inputs=example.golden_inputs(seed=0, batch=2), show_progress=False,
        allowed_architectures=(factory,), workdir=root / "publish-tmp",
    )  # fmt: skip
    manifest = read_manifest(store, MODEL, published.version)  # what the worker will read
    cache = SnapshotCache(root / "cache", budget_bytes=_budget_bytes(manifest.weights.size_bytes))
    local = cache.fetch(store, manifest)
    torch_path = root / "model.pt"
    torch.save(module.state_dict(), torch_path)
    files = ServeFiles(
        store_url=store_url,
        cache_dir=root / "cache",
        weights_path=Path(local.weights_path),
        torch_path=torch_path,
        inputs=inputs,
        reference=reference,
        factory=factory,
        factory_kwargs=dict(manifest.architecture.kwargs),
        size_bytes=manifest.weights.size_bytes,
        parameters=sum(p.numel() for p in module.parameters()),
    )
    del module
    gc.collect()  # the harness process keeps no second copy of the weights during the run
    return files


def _budget_bytes(size_bytes: int) -> int:
    """A cache, host and device budget that the model fits in several times over."""
    return 4 * size_bytes + 256 * MiB


def naive_spec(files: ServeFiles) -> dict[str, Any]:
    """What the naive probe loads and answers (:func:`warmstart.bench.serve_probe.answer_once`)."""
    return {
        "weights_path": str(files.torch_path),
        "factory": files.factory,
        "factory_kwargs": files.factory_kwargs,
        "inputs": {
            name: {"dtype": str(t.dtype).removeprefix("torch."), "data": t.tolist()} for name, t in files.inputs.items()
        },
    }


def worker_settings(files: ServeFiles, redis_url: str, answer_timeout_s: float) -> dict[str, object]:
    """The worker's (and the client's) settings: dev profile, CPU, budgets far above the model,
    warm-up and health settings at their defaults."""
    budget = _budget_bytes(files.size_bytes)
    return {
        "redis_url": redis_url,
        "store_url": files.store_url,
        "cache_dir": str(files.cache_dir),
        "cache_budget_bytes": budget,
        "host_budget_bytes": budget,
        "device_budget_bytes": budget,
        "device": "cpu",
        "profile": "dev",
        "allowed_architectures": [files.factory],
        "inference_timeout_s": answer_timeout_s,
        # The slowest inference here is a cold one; a redelivery would be counted twice.
        "visibility_timeout_s": max(300.0, 2 * answer_timeout_s),
    }


# --- statistics and the result --------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated between closest ranks (numpy's default).

    Raises:
        ValueError: no values.
    """
    items = sorted(values)
    if not items:
        raise ValueError("percentile of no samples")
    rank = (len(items) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(items) - 1)
    return items[low] + (items[high] - items[low]) * (rank - low)


def _spread_ms(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, mean and max of samples in seconds, in milliseconds."""
    return {
        "p50_ms": percentile(values, 50) * 1e3,
        "p90_ms": percentile(values, 90) * 1e3,
        "p99_ms": percentile(values, 99) * 1e3,
        "mean_ms": statistics.fmean(values) * 1e3,
        "max_ms": max(values) * 1e3,
    }


def _meets(value: float | None, bound: float, op: str) -> bool | None:
    if value is None:
        return None
    return value <= bound if op == "le" else value >= bound


def summarise(
    files: ServeFiles,
    warm: list[dict[str, float]],
    echoes: list[float],
    lazy: list[dict[str, Any]],
    naive: list[float],
    config: ServeBenchConfig,
    raw: list[float] | None = None,
) -> dict[str, Any]:
    """Turn the samples into the benchmark's JSON result (percentiles, ratios, targets).

    Pure arithmetic on plain numbers; ``files`` contributes only sizes and names.
    """
    overhead = [s["overhead_s"] for s in warm]
    headline = {
        "warm_overhead_p50_ms": percentile(overhead, 50) * 1e3,
        "warm_overhead_p99_ms": percentile(overhead, 99) * 1e3,
        "echo_p50_ms": percentile(echoes, 50) * 1e3,
        "echo_p99_ms": percentile(echoes, 99) * 1e3,
        "lazy_cold_s": median(s["lazy_cold_s"] for s in lazy),
        "naive_cold_s": median(naive),
        "raw_lazy_cold_s": median(raw) if raw else None,
    }
    ratios = {
        "warm_overhead_p50_ms/echo_p50_ms": ratio(headline["warm_overhead_p50_ms"], headline["echo_p50_ms"]),
        "warm_overhead_p99_ms/echo_p99_ms": ratio(headline["warm_overhead_p99_ms"], headline["echo_p99_ms"]),
        "naive_cold_s/lazy_cold_s": ratio(headline["naive_cold_s"], headline["lazy_cold_s"]),
        "raw_lazy_cold_s/lazy_cold_s": ratio(headline["raw_lazy_cold_s"], headline["lazy_cold_s"]),
    }
    targets = {
        name: {"ratio": key, "value": ratios[key], "bound": bound, "op": op, "met": _meets(ratios[key], bound, op)}
        for name, (key, bound, op) in TARGETS.items()
    }
    parts = ("e2e_s", "forward_s", "overhead_s", "submit_s", "dispatch_s", "return_s")
    lazy_parts = ("to_first_step_s", "restore_s", "warmup_and_check_s", "gate_to_forward_s", "forward_s", "return_s")
    return {
        "benchmark": "serve",
        **headline,
        "ratios": ratios,
        "targets": targets,
        "size_bytes": files.size_bytes,
        "model": {"name": MODEL, "factory": files.factory, "kwargs": files.factory_kwargs,
                  "parameters": files.parameters},  # fmt: skip
        "warm": {
            "requests": len(warm),
            "echo": _spread_ms(echoes),
            **{part.removesuffix("_s"): _spread_ms([s[part] for s in warm]) for part in parts},
        },
        "cold": {
            "lazy_cold_samples_s": [s["lazy_cold_s"] for s in lazy],
            "naive_cold_samples_s": list(naive),
            "raw_lazy_cold_samples_s": list(raw or []),
            # medians of the lazy start's parts (None where the worker did not publish one)
            "lazy_breakdown_s": {
                part: _median_or_none(s.get(part) for s in lazy) for part in lazy_parts
            },
            "lazy_warmup_runs": [s.get("warmup_runs") for s in lazy],
            "lazy_samples": lazy,
        },
        "samples": {
            "warm_overhead_s": overhead,
            "echo_s": list(echoes),
            "forward_s": [s["forward_s"] for s in warm],
        },
        "environment": environment(
            size_mb=config.size_mb, requests=config.requests, cold_repeats=config.cold_repeats,
            warmup_requests=config.warmup_requests, worker_concurrency=config.concurrency,
            echo_queue=f"infer.{MODEL}",
        ),  # fmt: skip
    }


def _median_or_none(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return median(known) if known else None


# --- the run --------------------------------------------------------------------------------


def run_serve_benchmark(config: ServeBenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run the whole benchmark: setup, redis-server, one worker, the cold then the warm path.

    Everything it starts or writes is stopped and removed before it returns or raises,
    KeyboardInterrupt included.

    Returns:
        The JSON result (see :func:`summarise` and docs/benchmarks.md).

    Raises:
        WarmstartError: a service or the worker failed, an answer was wrong or late.
    """
    from warmstart.processes import WorkerProcess
    from warmstart.infra.redis_client import connect
    from warmstart.infra.services import EmbeddedRedis
    from warmstart.infra.settings import load_settings
    from warmstart.workers.client import Client
    from warmstart.workers.registry import WorkerRegistry

    say = progress or (lambda _line: None)
    if config.workdir is not None:
        Path(config.workdir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="warmstart-bench-serve-", dir=config.workdir))
    redis_server: EmbeddedRedis | None = None
    worker: WorkerProcess | None = None
    client = None
    timeout_s = config.answer_timeout_s
    try:
        say(f"setup: building, publishing and pre-fetching a ~{config.size_mb:g} MiB model in {root}")
        files = prepare_files(root, config.size_mb)
        say(f"setup: {format_bytes(files.size_bytes)}; starting redis-server and worker {WORKER}")
        redis_server = EmbeddedRedis()
        redis_server.start()
        settings = worker_settings(files, redis_server.url, timeout_s)
        worker = WorkerProcess(WORKER, settings, concurrency=config.concurrency)
        worker.start()
        worker.wait_ready(timeout_s=max(120.0, timeout_s))
        registry = WorkerRegistry(connect(redis_server.url))
        nodename = str(registry.workers()[0][WORKER]["nodename"])
        client = Client(load_settings(**settings))
        warm_client(client, config.warmup_requests, timeout_s)
        raw: list[float] = []

        lazy: list[dict[str, Any]] = []
        naive: list[float] = []
        for repeat in range(1, config.cold_repeats + 1):
            from_tier = "REMOTE" if repeat == 1 else "DISK"
            pagecache.warm(files.weights_path)
            sample, answer = measure_lazy_cold(client, registry, files.inputs, from_tier, timeout_s)
            check_output("the lazy cold start", answer_output(answer), files.reference)
            lazy.append(sample)
            say(f"[{repeat}/{config.cold_repeats}] lazy cold start (snapshot cached, worker held it at "
                f"{from_tier}): {format_seconds(sample['lazy_cold_s'])}")  # fmt: skip
            demote(client.app, nodename, "DISK", timeout_s)
            pagecache.warm(files.torch_path)
            naive_s, output = measure_naive_cold(naive_spec(files), timeout_s)
            check_output("the naive cold start", output, files.reference)
            naive.append(naive_s)
            say(f"[{repeat}/{config.cold_repeats}] naive cold start (fresh process, torch.load): "
                f"{format_seconds(naive_s)}")  # fmt: skip

        raw = measure_raw_cold_starts(files, settings, client, registry, nodename, config, say)

        say("warm: pre-warming to HOT, then untimed warm-up requests")
        make_hot(client, nodename, timeout_s)
        _, answer = time_inference(client, files.inputs, timeout_s)
        check_output("the warm path", answer_output(answer), files.reference)
        measure_warm(client, files.inputs, config.warmup_requests, timeout_s, lambda _line: None)
        warm, echoes = measure_warm(client, files.inputs, config.requests, timeout_s, say)
        return summarise(files, warm, echoes, lazy, naive, config, raw)
    except WarmstartError as e:
        if worker is not None and not worker.alive():
            raise WarmstartError(f"{e}\nthe worker exited; its log:\n{worker.output()[-4000:]}") from e
        raise
    finally:
        if client is not None:
            client.app.close()
        if worker is not None:
            worker.close()
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(root, ignore_errors=True)


def measure_raw_cold_starts(files: ServeFiles, settings: dict[str, object], client: Any, registry: Any,
                            nodename: str, config: ServeBenchConfig, say: Progress) -> list[float]:
    """``cold_repeats`` lazy cold starts from a plain Celery client (no warmstart import),
    with a beat running: it sees the request on the queue and sends the pre-warm. The model
    is at DISK before each, as for the Python client's repeats after the first."""
    from warmstart.bench.serve_raw import measure_raw_lazy_cold
    from warmstart.infra.redis_client import connect, key
    from warmstart.processes import ChildProcess
    from warmstart.workers.wire import encode_tensor

    beat = ChildProcess(["beat", "--loglevel", "WARNING"], {**settings, "plan_interval_s": 1.0}).start()
    samples: list[float] = []
    try:
        redis = connect(str(settings["redis_url"]))
        deadline = time.monotonic() + 60
        while not redis.get(key("beat", "leader")):
            if time.monotonic() > deadline or not beat.alive():
                raise WarmstartError(f"the beat did not start:\n{beat.output()[-4000:]}")
            time.sleep(0.1)
        time.sleep(2.0)  # its first tick is done and its queue watcher listens
        kwargs = {"model": MODEL, "inputs": {n: encode_tensor(t) for n, t in files.inputs.items()}}
        for repeat in range(1, config.cold_repeats + 1):
            pagecache.warm(files.weights_path)
            seconds, answer = measure_raw_lazy_cold(str(settings["redis_url"]), kwargs, config.answer_timeout_s)
            check_output("the raw client's lazy cold start", answer_output(answer), files.reference)
            samples.append(seconds)
            say(f"[{repeat}/{config.cold_repeats}] raw Celery client lazy cold start (beat sends the "
                f"pre-warm, model at DISK): {format_seconds(seconds)}")  # fmt: skip
            demote(client.app, nodename, "DISK", config.answer_timeout_s)
    finally:
        beat.close()
    return samples


# --- the tables -----------------------------------------------------------------------------

_TARGET_LABELS = {
    "warm_overhead_p50": "warm overhead p50 ÷ echo p50",
    "warm_overhead_p99": "warm overhead p99 ÷ echo p99",
    "lazy_cold_speedup": "naive cold ÷ lazy cold",
    "raw_lazy_cold": "raw Celery client lazy cold ÷ lazy cold",
}


def _ms(value_ms: float | None) -> str:
    return format_seconds(None if value_ms is None else value_ms / 1e3)


def serve_tables(result: dict[str, Any]) -> list[Any]:
    """The rich tables of a result: the warm path, the cold paths, and the targets."""
    env, warm, cold = result["environment"], result["warm"], result["cold"]
    rows = [
        ["inference end to end", *(_ms(warm["e2e"][k]) for k in ("p50_ms", "p90_ms", "p99_ms"))],
        ["  model forward (worker)", *(_ms(warm["forward"][k]) for k in ("p50_ms", "p90_ms", "p99_ms"))],
        ["  overhead = end to end - forward", *(_ms(warm["overhead"][k]) for k in ("p50_ms", "p90_ms", "p99_ms"))],
        ["    client submit", *(_ms(warm["submit"][k]) for k in ("p50_ms", "p90_ms", "p99_ms"))],
        ["    sent -> forward starts", *(_ms(warm["dispatch"][k]) for k in ("p50_ms", "p90_ms", "p99_ms"))],
        ["    forward ends -> answer in hand", *(_ms(warm["return"][k]) for k in ("p50_ms", "p90_ms", "p99_ms"))],
        ["bare echo round trip (same queue)", *(_ms(warm["echo"][k]) for k in ("p50_ms", "p90_ms", "p99_ms"))],
    ]
    warm_table = make_table(
        f"Warm path: {warm['requests']} sequential requests, {format_bytes(result['size_bytes'])} transformer encoder",
        ["measure", "p50", "p90", "p99"],
        rows,
        caption=(f"echo = warmstart.echo on {env['echo_queue']}, interleaved with the inferences; "
                 f"torch {env['torch']}, {env['usable_cpus']} CPUs, load {env['load_average_1m']:.2f}"),  # fmt: skip
    )
    breakdown = cold["lazy_breakdown_s"]
    cold_rows = [
        ["lazy cold start: enqueue -> answer (median)", format_seconds(result["lazy_cold_s"])],
        ["  enqueue -> first tier step (client, broker, pickup)", format_seconds(breakdown["to_first_step_s"])],
        ["  restore (DISK -> HOST)", format_seconds(breakdown["restore_s"])],
        ["  warm-up + health check (DEVICE -> HOT)", format_seconds(breakdown["warmup_and_check_s"])],
        ["  gate opens -> request's forward starts", format_seconds(breakdown["gate_to_forward_s"])],
        ["  forward", format_seconds(breakdown["forward_s"])],
        ["  forward ends -> answer in hand", format_seconds(breakdown["return_s"])],
        ["naive cold start: process start -> answer (median)", format_seconds(result["naive_cold_s"])],
        ["raw Celery client lazy cold start, beat running (median)", format_seconds(result.get("raw_lazy_cold_s"))],
        ["samples: lazy", ", ".join(format_seconds(v) for v in cold["lazy_cold_samples_s"])],
        ["samples: naive", ", ".join(format_seconds(v) for v in cold["naive_cold_samples_s"])],
        ["samples: raw client", ", ".join(format_seconds(v) for v in cold.get("raw_lazy_cold_samples_s", []))],
        ["warm-up runs per lazy start", ", ".join(str(v) for v in cold["lazy_warmup_runs"])],
    ]
    cold_table = make_table(
        "Cold path: snapshot in the worker's cache and page cache", ["measure", "value"], cold_rows
    )
    target_rows = []
    symbols = {"ge": "≥", "le": "≤"}
    for name, t in result["targets"].items():
        target_rows.append(
            [_TARGET_LABELS[name], format_ratio(t["value"]), f"{symbols[t['op']]} {t['bound']:g}",
             format_target(t["met"])]  # fmt: skip
        )
    targets = make_table("Targets (reported, not asserted)", ["target", "value", "bound", "verdict"], target_rows)
    return [warm_table, cold_table, targets]
