"""``warmstart bench batch``: dynamic batching on and off, and a bare Celery echo, same run.

A MiniLM-size encoder (6 layers, 384 wide, 30,522 ids, sequences of 32 tokens) is published
twice with the same weights: ``enc-unbatched`` (one forward per request) and ``enc-batched``
(``max_batch`` 32, ``max_wait_ms`` 5). One worker (32 task threads) serves both. For each,
``clients`` threads send single-sentence requests back to back (a closed loop) for a fixed
number of requests; throughput is requests ÷ wall time, latencies are client round trips.
The echo row is ``warmstart.echo`` on the batched model's queue from as many clients: the
most a worker could answer if the model cost nothing.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmstart.bench.report import environment, make_table
from warmstart.bench.serve import percentile

Progress = Callable[[str], None]
KWARGS = {"vocab_size": 30522, "d_model": 384, "num_heads": 6, "num_layers": 6, "ffn_dim": 1536, "max_len": 512}
WORKER = "bench-batch"
TARGETS = {"throughput": ("batched/unbatched throughput", 3.0, "ge"), "p99": ("batched p99 / unbatched p99", 1.0, "le")}


@dataclass(frozen=True)
class BatchBenchConfig:
    clients: int = 32
    requests: int = 640
    seq: int = 32
    max_batch: int = 32
    max_wait_ms: float = 5.0
    workdir: Path | None = None
    answer_timeout_s: float = 120.0


def _publish(root: Path, config: BatchBenchConfig) -> tuple[str, dict[str, Any]]:
    import torch

    from warmstart.snapshot.examples import TRANSFORMER_FACTORY, build_transformer_encoder
    from warmstart.snapshot.publish import publish_module
    from warmstart.snapshot.stores import open_store_url

    torch.manual_seed(0)
    module = build_transformer_encoder(**KWARGS).eval()
    specs = [
        {"name": n, "dtype": "int64", "shape": ["batch", "seq"], "value_range": r, "pad": 0, "dim_max": {"seq": 512}}
        for n, r in (("input_ids", [0, KWARGS["vocab_size"]]), ("attention_mask", [0, 2]))
    ]
    store_url = f"file://{root / 'store'}"
    store = open_store_url(store_url)
    for name, batching in (("enc-unbatched", None), ("enc-batched", {"max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms})):
        publish_module(store, name, "v1", module, {"factory": TRANSFORMER_FACTORY, "kwargs": KWARGS}, specs,
                       show_progress=False, batching=batching, workdir=root)  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    inputs = {
        "input_ids": torch.randint(0, KWARGS["vocab_size"], (1, config.seq), generator=generator),
        "attention_mask": torch.ones(1, config.seq, dtype=torch.int64),
    }
    return store_url, inputs


def _load(clients: int, requests: int, one: Callable[[], None]) -> dict[str, Any]:
    """``requests`` calls of ``one`` from ``clients`` threads, back to back."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            t0 = time.perf_counter()
            try:
                one()
            except BaseException as e:  # noqa: BLE001 - reported after the run
                errors.append(e)
                return
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {
        "requests": len(latencies), "wall_s": wall, "throughput_rps": len(latencies) / wall,
        "p50_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3,
    }  # fmt: skip


def run_batch_benchmark(config: BatchBenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Publish, start redis-server and one worker, run the three loads; everything started
    is stopped and removed before it returns or raises."""
    from warmstart.infra.celery_app import infer_queue
    from warmstart.infra.services import EmbeddedRedis
    from warmstart.infra.settings import load_settings
    from warmstart.processes import WorkerProcess
    from warmstart.snapshot.examples import TRANSFORMER_FACTORY
    from warmstart.bench.serve_paths import time_echo
    from warmstart.workers.client import Client

    say = progress or (lambda _line: None)
    root = Path(tempfile.mkdtemp(prefix="warmstart-bench-batch-", dir=config.workdir))
    redis_server = worker = client = None
    try:
        say("setup: publishing a MiniLM-size encoder twice (batching off / on)")
        store_url, inputs = _publish(root, config)
        redis_server = EmbeddedRedis()
        redis_server.start()
        settings = {
            "redis_url": redis_server.url, "store_url": store_url, "cache_dir": str(root / "cache"),
            "device": "cpu", "profile": "prod", "eager_models": ["enc-unbatched", "enc-batched"],
            "allowed_architectures": [TRANSFORMER_FACTORY], "inference_timeout_s": config.answer_timeout_s,
            "visibility_timeout_s": 600.0,
        }  # fmt: skip
        worker = WorkerProcess(WORKER, settings, concurrency=max(config.clients, 2))
        worker.start()
        worker.wait_ready(timeout_s=180)
        client = Client(load_settings(**settings))
        payload = client.encode_inputs(inputs)
        result: dict[str, Any] = {"config": {**config.__dict__, "workdir": None, "model_kwargs": KWARGS},
                                  "environment": environment()}
        for name, key in (("enc-unbatched", "unbatched"), ("enc-batched", "batched")):
            sizes: list[int] = []
            forwards: list[float] = []

            def one(name: str = name) -> None:
                answer = client.submit(name, inputs, timeout_s=config.answer_timeout_s).raw(config.answer_timeout_s)
                sizes.append(int(answer.get("batch_size", 1)))
                forwards.append(float(answer["forward_ms"]))

            one()  # HOT, and the client warm
            _load(config.clients, 2 * config.clients, one)
            sizes.clear()
            forwards.clear()
            say(f"{key}: {config.requests} requests from {config.clients} clients")
            result[key] = _load(config.clients, config.requests, one)
            result[key]["mean_batch_size"] = sum(sizes) / len(sizes)
            result[key]["forward_p50_ms"] = percentile(forwards, 50)
        queue = infer_queue("enc-batched")
        say(f"echo: {config.requests} bare round trips from {config.clients} clients")
        result["echo"] = _load(config.clients, config.requests, lambda: time_echo(client.app, queue, payload, config.answer_timeout_s))
        ratio_tp = result["batched"]["throughput_rps"] / result["unbatched"]["throughput_rps"]
        ratio_p99 = result["batched"]["p99_ms"] / result["unbatched"]["p99_ms"]
        result["ratios"] = {"batched/unbatched throughput": ratio_tp, "batched p99 / unbatched p99": ratio_p99}
        result["targets"] = {
            k: {"ratio": name, "bound": bound, "op": op, "met": (ratio_tp >= bound) if op == "ge" else (ratio_p99 <= bound)}
            for k, (name, bound, op) in TARGETS.items()
        }
        return result
    finally:
        if client is not None:
            client.app.close()
        if worker is not None:
            worker.close()
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(root, ignore_errors=True)


def batch_tables(result: dict[str, Any]) -> list[Any]:
    rows = [
        [key, f"{result[key]['throughput_rps']:.1f}",
         *(f"{result[key][k]:.1f}" if k in result[key] else "—" for k in ("p50_ms", "p99_ms", "mean_batch_size", "forward_p50_ms"))]
        for key in ("unbatched", "batched", "echo")
    ]
    c = result["config"]
    return [
        make_table(
            f"Dynamic batching: {c['clients']} concurrent clients, {c['requests']} requests, seq {c['seq']}",
            ["path", "throughput (req/s)", "p50 (ms)", "p99 (ms)", "mean batch", "forward p50 (ms)"],
            rows,
            caption=", ".join(
                f"{t['ratio']} {result['ratios'][t['ratio']]:.2f} (target {'≥' if t['op'] == 'ge' else '≤'} {t['bound']:g}: "
                f"{'met' if t['met'] else 'NOT met'})" for t in result["targets"].values()
            ),
        )
    ]
