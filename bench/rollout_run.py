"""``warmstart bench rollout``, the running half: a private Redis and S3, two workers and a
beat, one model under steady load, and four phases one after the other — a good version rolled
out, a bad one (NaN on real inputs its golden inputs lack), a slow one (3× the work), and the
model's worker drained (SIGTERM). ``bench/rollout.py`` says what is counted.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmstart.bench.rollout import PHASES, summarise_phase, verdicts

MODEL, BUCKET, PREFIX = "ranker", "warmstart-rollout", "models"
Say = Callable[[str], None]


@dataclass
class RolloutBenchConfig:
    rate_per_s: float = 20.0
    warmup_s: float = 6.0
    settle_s: float = 2.0  # load kept on after each phase ends, inside the phase
    workers: int = 2
    width: int = 1024  # a few ms a forward on one CPU thread: "3× slower" is well above timer noise
    depth: int = 6
    nan_above: float = 5.0  # golden inputs are standard normal; 1 in 4 real requests has an 8
    slow_repeat: int = 3
    answer_timeout_s: float = 60.0
    phase_timeout_s: float = 180.0
    seed: int = 5
    workdir: Path | None = None
    phases: tuple[str, ...] = PHASES  # the demo runs ("good", "bad")
    canary_share: float = 0.1  # asked of every rollout; the good one reaches its canary step
    bake_s: float = 5.0

    def __post_init__(self) -> None:
        unknown = [p for p in self.phases if p not in PHASES]
        if unknown or not self.phases:
            raise ValueError(f"unknown phases {unknown}: choose from {', '.join(PHASES)}")


def _settings(cfg: RolloutBenchConfig, redis_url: str, s3_url: str, cache_dir: Path) -> dict[str, object]:
    from warmstart.bench.rollout_models import FACTORY

    return {
        "redis_url": redis_url, "store_url": f"s3://{BUCKET}/{PREFIX}", "s3_endpoint_url": s3_url,
        "cache_dir": str(cache_dir), "device": "cpu", "profile": "prod",
        "allowed_architectures": [FACTORY], "worker_concurrency": 4, "torch_threads": 1,
        "cache_budget_bytes": 1024 * 2**20, "host_budget_bytes": 512 * 2**20, "device_budget_bytes": 512 * 2**20,
        "traffic_minute_s": 2.0, "plan_interval_s": 0.5, "heartbeat_interval_s": 0.5, "heartbeat_ttl_s": 3.0,
        "inference_timeout_s": cfg.answer_timeout_s, "scale_min_workers": cfg.workers,
        "scale_max_workers": cfg.workers, "drain_grace_s": 30.0,
    }  # fmt: skip


def _publish(cfg: RolloutBenchConfig, store: Any) -> int:
    """The four versions; the model's size in bytes."""
    import torch

    from warmstart.bench.rollout_models import FACTORY, build_mlp
    from warmstart.snapshot.manifest import ArchitectureSpec, InputSpec
    from warmstart.snapshot.publish import publish_module

    generator = torch.Generator().manual_seed(cfg.seed)
    golden = {"x": torch.randn(4, 64, generator=generator)}
    if float(golden["x"].abs().max()) >= cfg.nan_above:
        raise ValueError("the golden inputs reach nan_above: choose another seed")
    versions = {"v1": ({}, 1), "v2": ({}, 2), "v3": ({"nan_above": cfg.nan_above}, 1), "v4": ({"repeat": cfg.slow_repeat}, 1)}
    size = 0
    for version, (extra, seed) in versions.items():
        kwargs = {"width": cfg.width, "depth": cfg.depth, **extra}
        torch.manual_seed(seed)
        manifest = publish_module(
            store, MODEL, version, build_mlp(**kwargs).eval(), ArchitectureSpec(FACTORY, kwargs),
            [InputSpec("x", "float32", ("batch", 64))], golden, show_progress=False,
            allowed_architectures=[FACTORY], set_live=version == "v1",
        )  # fmt: skip
        size = manifest.weights.size_bytes
    return size


class _Load:
    """Steady requests, each recorded with the phase it was sent in."""

    def __init__(self, client: Any, registry: Any, cfg: RolloutBenchConfig) -> None:
        self.client, self.registry, self.cfg = client, registry, cfg
        self.phase = "warmup"
        self.t0 = time.monotonic()
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=32)
        self._thread = threading.Thread(target=self._send_all, name="rollout-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._pool.shutdown(wait=True)

    def _send_all(self) -> None:
        import torch

        interval = 1.0 / self.cfg.rate_per_s
        generator = torch.Generator().manual_seed(self.cfg.seed + 1)
        next_s, i = time.monotonic(), 0
        while not self._stop.is_set():
            x = torch.randn(1, 64, generator=generator)
            if i % 4 == 3:
                x[0, i % 64] = 8.0  # a real input unlike the golden ones
            cold = not self.registry.hot_workers(MODEL)
            self._pool.submit(self._one, self.phase, x, cold)
            i += 1
            next_s += interval
            self._stop.wait(max(0.0, next_s - time.monotonic()))

    def _one(self, phase: str, x: Any, cold: bool) -> None:
        from warmstart.infra.errors import InferenceTimeoutError

        record: dict[str, Any] = {"phase": phase, "cold": cold, "ok": False, "lost": False, "version": None,
                                  "latency_ms": None, "error": None, "sent_s": time.monotonic() - self.t0}  # fmt: skip
        t0 = time.perf_counter()
        try:
            answer = self.client.submit(MODEL, {"x": x}, timeout_s=self.cfg.answer_timeout_s).raw()
            record.update(ok=True, version=answer["version"])
        except InferenceTimeoutError as e:
            record.update(lost=True, error=str(e))
        except Exception as e:  # an error answer: counted as failed
            record["error"] = f"{type(e).__name__}: {e}"
        record["latency_ms"] = (time.perf_counter() - t0) * 1000
        with self._lock:
            self.records.append(record)


def run_rollout_benchmark(cfg: RolloutBenchConfig, say: Say = print) -> dict[str, Any]:
    """The phases in order; the JSON tree has one key per phase, ``config`` and ``verdicts``."""
    from warmstart.infra.redis_client import connect
    from warmstart.infra.services import EmbeddedRedis, EmbeddedS3, apply_test_credentials
    from warmstart.infra.settings import load_settings
    from warmstart.processes import ChildProcess, WorkerProcess
    from warmstart.scheduler.rollout import Rollouts, ShadowLimits, start_rollout
    from warmstart.snapshot.stores.s3 import S3Store
    from warmstart.workers.client import Client
    from warmstart.workers.registry import WorkerRegistry

    root = Path(tempfile.mkdtemp(prefix="warmstart-bench-rollout-", dir=cfg.workdir))
    apply_test_credentials()
    redis_server, s3 = EmbeddedRedis().start(), EmbeddedS3().start()
    workers: list[Any] = []
    beat = load = client = None
    try:
        store = S3Store(BUCKET, PREFIX, endpoint_url=s3.url)
        store.ensure_bucket()
        size = _publish(cfg, store)
        values = _settings(cfg, redis_server.url, s3.url, root / "cache")
        settings = load_settings(**values)
        result: dict[str, Any] = {"config": {**{k: v for k, v in cfg.__dict__.items() if k != "workdir"},
                                             "model": MODEL, "model_bytes": size}}  # fmt: skip
        say(f"starting {cfg.workers} workers and a beat")
        for i in range(cfg.workers):
            worker = WorkerProcess(f"ro-{i + 1}", {**values, "cache_dir": str(root / f"cache-{i + 1}")}, concurrency=4)
            workers.append(worker.start())
        for worker in workers:
            worker.wait_ready(120)
        beat = ChildProcess(["beat", "--loglevel", "WARNING"], values).start()
        client = Client(settings)
        registry = WorkerRegistry(connect(settings.redis_url))
        rollouts = Rollouts(connect(settings.redis_url))
        load = _Load(client, registry, cfg)
        client.infer(MODEL, {"x": [[0.0] * 64]}, timeout_s=120)  # the first request warms it (not counted)
        load.start()
        time.sleep(cfg.warmup_s)  # recent real requests for the shadow step to replay

        def finished() -> dict[str, Any]:
            deadline = time.monotonic() + cfg.phase_timeout_s
            while time.monotonic() < deadline:
                record = rollouts.get(MODEL)
                if record and record["phase"] in ("done", "rolled_back"):
                    return record
                time.sleep(0.1)
            raise TimeoutError(f"the rollout did not end within {cfg.phase_timeout_s} s")

        versions = {p: v for p, v in (("good", "v2"), ("bad", "v3"), ("slow", "v4")) if p in cfg.phases}
        outcomes: dict[str, dict[str, Any]] = {}
        spans: list[dict[str, Any]] = []
        for phase, version in versions.items():
            spans.append({"phase": phase, "start_s": time.monotonic() - load.t0})
            load.phase = phase
            say(f"{phase}: rolling out {version}")
            t0 = time.monotonic()
            start_rollout(store, rollouts, MODEL, version, ShadowLimits(), canary_share=cfg.canary_share, bake_s=cfg.bake_s)
            record = finished()
            took = time.monotonic() - t0
            time.sleep(cfg.settle_s)
            outcomes[phase] = {"rolled_back": record["phase"] == "rolled_back", "reason": record.get("reason"),
                               "history": [p for p, _ in record["history"]], "seconds": took,
                               "canary": record.get("canary_report")}  # fmt: skip
            spans[-1].update(end_s=time.monotonic() - load.t0, outcome=record["phase"], version=version)
            say(f"{phase}: {record['phase']} in {took:.1f} s ({record.get('reason') or 'no failed check'})")

        if "drain" in cfg.phases:
            load.phase = "drain"
            spans.append({"phase": "drain", "start_s": time.monotonic() - load.t0})
            holder = registry.hot_workers(MODEL)[0]
            say(f"drain: SIGTERM to {holder}, which serves {MODEL}")
            t0 = time.monotonic()
            next(w for w in workers if w.name == holder).stop(timeout_s=120)
            outcomes["drain"] = {"seconds_to_stop": time.monotonic() - t0, "stopped": holder}
            spans[-1].update(end_s=time.monotonic() - load.t0, outcome=f"{holder} stopped", version=None)
            time.sleep(cfg.settle_s)
            outcomes["drain"]["hot_after"] = registry.hot_workers(MODEL)
        load.stop()  # every request sent has its answer (or its timeout) recorded
        for phase, version in versions.items():
            result[phase] = {**summarise_phase(load.records, phase, new_version=version), **outcomes[phase]}
        if "good" in result:
            result["good"].update(promoted=not outcomes["good"]["rolled_back"], seconds_to_promote=outcomes["good"]["seconds"])
        if "bad" in result:
            result["bad"]["served_by_bad"] = result["bad"]["served_by_new"]
        if "drain" in outcomes:
            result["drain"] = {**summarise_phase(load.records, "drain"), **outcomes["drain"]}
        result["warmup"] = summarise_phase(load.records, "warmup")
        result["timeline"] = {"spans": spans, "requests": [
            {k: r[k] for k in ("sent_s", "phase", "version", "ok", "lost", "cold")} for r in load.records]}
        result["verdicts"] = verdicts(result)
        return result
    finally:
        if load is not None:
            load.stop()
        if client is not None:
            client.app.close()
        if beat is not None:
            beat.close()
        for worker in workers:
            worker.close()
        s3.stop()
        redis_server.stop()
        shutil.rmtree(root, ignore_errors=True)
