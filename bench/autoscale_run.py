"""``warmstart bench autoscale``, the running half: one private Redis and S3, the five example
models, and for each mode a beat, the local scaler and its worker processes replaying the
same compressed day (``bench/autoscale.py`` says what is counted and how).

Every mode gets the same preparation before its clock: its first workers started and
registered, the same warm-up requests answered (so the lazy ``reactive`` workers hold the
night's models HOT too), and the earlier days' traffic recorded, lined up with the replay's
minutes (the clock starts at the next traffic-minute boundary). Recording past minutes after
today's warm-up is safe: the recorder's last-arrival minute only moves forward.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmstart.bench.autoscale import (
    MODES, DayShape, QueueLengthTarget, earlier_days, modes_of, schedule, summarise_mode, verdicts,
)
from warmstart.bench.autoscale import worker_minutes as count_worker_minutes

MiB = 1024**2
BUCKET, PREFIX = "warmstart-autoscale", "models"
Say = Callable[[str], None]


@dataclass
class AutoscaleBenchConfig:
    shape: DayShape = field(default_factory=DayShape)
    modes: tuple[str, ...] = MODES
    min_workers: int = 1
    max_workers: int = 3
    history_days: int = 3
    #: Holds the everyday models and long-form (~27 MiB) or premium (~33 MiB), not both.
    device_budget_bytes: int = 36 * MiB
    concurrency: int = 4
    list_length: int = 5  # the reactive scaler: KEDA's default listLength
    stabilise_min: int = 5  # its scale-down window (the HPA's 300 s, in traffic minutes)
    answer_timeout_s: float = 120.0
    warmup_requests: int = 3
    seed: int = 11
    workdir: Path | None = None

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ValueError(f"unknown modes {unknown}: choose from {', '.join(MODES)}")
        if not 0 <= self.min_workers <= self.max_workers or self.max_workers < 1:
            raise ValueError(f"need 0 <= --min-workers ({self.min_workers}) <= --max-workers ({self.max_workers}), max >= 1")


def _settings(cfg: AutoscaleBenchConfig, redis_url: str, s3_url: str, cache_dir: Path, profile: str) -> dict[str, object]:
    from warmstart.bench.autoscale import NIGHT_SHARES

    return {
        "redis_url": redis_url,
        "store_url": f"s3://{BUCKET}/{PREFIX}",
        "s3_endpoint_url": s3_url,
        "cache_dir": str(cache_dir),
        "device": "cpu",
        "profile": profile,
        "eager_models": sorted(NIGHT_SHARES),
        "cache_budget_bytes": 1024 * MiB,
        "host_budget_bytes": 2 * cfg.device_budget_bytes,
        "device_budget_bytes": cfg.device_budget_bytes,
        "worker_concurrency": cfg.concurrency,
        "torch_threads": 1,
        "traffic_minute_s": cfg.shape.minute_s,
        "plan_interval_s": min(1.0, cfg.shape.minute_s / 2),
        "heartbeat_interval_s": 0.5,
        "heartbeat_ttl_s": 3.0,
        "inference_timeout_s": cfg.answer_timeout_s,
        "scale_min_workers": cfg.min_workers,
        "scale_max_workers": cfg.max_workers,
        "scale_drain": True,
    }


class _Mode:
    """One mode's run: its scaler, beat, sender and sampler."""

    def __init__(self, mode: str, cfg: AutoscaleBenchConfig, services: dict[str, str], root: Path) -> None:
        from warmstart.infra.redis_client import connect
        from warmstart.workers.registry import WorkerRegistry

        self.mode, self.cfg = mode, cfg
        profile = "dev" if mode == "reactive" else "prod"
        cache = root / f"cache-{mode}"
        shutil.rmtree(cache, ignore_errors=True)
        self.values = _settings(cfg, services["redis"], services["s3"], cache, profile)
        self.client = connect(services["redis"], timeout_s=5.0)
        self.registry = WorkerRegistry(self.client)
        self.records: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.scaler: Any = None
        self.beat: Any = None
        self.start_to_ready_s: float | None = None

    # --- preparation ----------------------------------------------------------------------

    def record_history(self, start_s: float) -> None:
        from warmstart.scheduler.scaling import DAY_MIN
        from warmstart.scheduler.traffic import TrafficRecorder

        shape = self.cfg.shape
        traffic = TrafficRecorder(self.client, minute_s=shape.minute_s)
        writes = []
        for day, counts in enumerate(earlier_days(shape, self.cfg.history_days, self.cfg.seed)):
            offset_s = (day + 1) * DAY_MIN * shape.minute_s
            for (model, minute), n in counts.items():
                writes.append((model, n, start_s - offset_s + (minute + 0.5) * shape.minute_s))
        traffic.record_many(sorted(writes, key=lambda w: w[2]))

    def start(self, worker_start_s: float | None) -> None:
        from warmstart.autoscale import LocalScaler
        from warmstart.processes import ChildProcess

        cfg = self.cfg
        if self.mode == "fixed":
            target, floor = (lambda: cfg.max_workers), cfg.max_workers
        elif self.mode == "reactive":
            queued = QueueLengthTarget(self._queued, cfg.list_length, cfg.min_workers, cfg.stabilise_min * cfg.shape.minute_s, time.monotonic)
            target, floor = queued, cfg.min_workers
        else:
            target, floor = None, cfg.min_workers  # the beat's desired_workers
        self.scaler = LocalScaler(str(self.values["redis_url"]), floor, cfg.max_workers, self.values,
                                  prefix=f"as-{self.mode}", drain_timeout_s=60, target=target,
                                  hand_over_first=self.mode != "reactive", concurrency=cfg.concurrency)  # fmt: skip
        t0 = time.monotonic()
        threading.Thread(target=self.scaler.run, args=(0.5,), name=f"scaler-{self.mode}", daemon=True).start()
        self._until(lambda: len(self.registry.workers()[0]) >= floor and self._eager_hot(), 180, "the first workers are ready")
        self.start_to_ready_s = time.monotonic() - t0
        beat_values = {**self.values, "scale_worker_start_s": worker_start_s or self.start_to_ready_s}
        self.beat = ChildProcess(["beat", "--loglevel", "WARNING"], beat_values).start()

    def warm_up(self, client: Any, inputs: dict[str, list[Any]]) -> None:
        """The same untimed requests in every mode: the night's models answered a few times."""
        from warmstart.bench.autoscale import NIGHT_SHARES

        pending = [client.submit(m, inputs[m][i % len(inputs[m])], timeout_s=self.cfg.answer_timeout_s)
                   for m in sorted(NIGHT_SHARES) for i in range(self.cfg.warmup_requests)]  # fmt: skip
        for p in pending:
            p.get(timeout_s=self.cfg.answer_timeout_s)

    def _eager_hot(self) -> bool:
        if self.values["profile"] != "prod":
            return True
        return all(self.registry.hot_workers(m) for m in self.values["eager_models"])  # type: ignore[union-attr]

    def _queued(self) -> int:
        from warmstart.infra.redis_client import redis_errors

        with redis_errors(self.client, "reading the queue lengths"):
            pipe = self.client.pipeline(transaction=False)
            for model in self.cfg.shape.models():
                pipe.llen(f"infer.{model}")
            return int(sum(pipe.execute()))

    def _until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        from warmstart.infra.errors import ServiceError

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise ServiceError(f"bench autoscale ({self.mode}): {what}: not within {timeout_s:.0f} s")

    # --- the replay -----------------------------------------------------------------------

    def replay(self, client: Any, arrivals: list[tuple[float, str]], inputs: dict[str, list[Any]], start_s: float) -> None:
        stop = threading.Event()
        sampler = threading.Thread(target=self._sample, args=(start_s, stop), daemon=True)
        sampler.start()
        with ThreadPoolExecutor(256, thread_name_prefix="answers") as waiters:
            for i, (at, model) in enumerate(arrivals):
                delay = start_s + at - time.time()
                if delay > 0:
                    time.sleep(delay)
                cold = not self.registry.hot_workers(model)
                sent = time.time()
                try:
                    pending = client.submit(model, inputs[model][i % len(inputs[model])], timeout_s=self.cfg.answer_timeout_s)
                except Exception as e:  # noqa: BLE001 - counted: an unsent request is a failure
                    self._record(sent - start_s, model, cold, None, "failed", repr(e))
                    continue
                waiters.submit(self._wait, pending, sent, start_s, model, cold)
        stop.set()
        sampler.join()

    def _wait(self, pending: Any, sent: float, start_s: float, model: str, cold: bool) -> None:
        from warmstart.infra.errors import InferenceTimeoutError

        try:
            pending.get(timeout_s=self.cfg.answer_timeout_s)
            self._record(sent - start_s, model, cold, time.time() - sent, "ok")
        except InferenceTimeoutError as e:
            self._record(sent - start_s, model, cold, None, "lost", str(e))
        except Exception as e:  # noqa: BLE001 - an error answer, typed or not, is a failure
            self._record(sent - start_s, model, cold, None, "failed", f"{type(e).__name__}: {e}")

    def _record(self, sent_s: float, model: str, cold: bool, latency_s: float | None, outcome: str, error: str = "") -> None:
        with self.lock:
            self.records.append({"sent_s": sent_s, "model": model, "cold": cold, "latency_s": latency_s,
                                 "outcome": outcome, "error": error[:300]})  # fmt: skip

    def _sample(self, start_s: float, stop: threading.Event) -> None:
        from warmstart.infra.errors import WarmstartError

        while not stop.wait(0.5):
            try:
                alive = self.registry.workers()[0]
                tiers = {w: {m: s.get("tier", "") for m, s in self.registry.models_of(w).items()} for w in sorted(alive)}
            except WarmstartError:
                continue
            self.samples.append({"t_s": time.time() - start_s, "target": self.scaler.target, "tiers": tiers})

    def close(self) -> None:
        if self.scaler is not None:
            self.scaler.stop()
            deadline = time.monotonic() + 120
            while self.scaler.workers and time.monotonic() < deadline:
                time.sleep(0.2)
        if self.beat is not None:
            self.beat.close()


def run_autoscale_benchmark(cfg: AutoscaleBenchConfig, say: Say = print) -> dict[str, Any]:
    """Run every mode of ``cfg`` on the same day. The JSON tree: one key per mode (its
    numbers), ``config``, ``verdicts`` and ``timelines`` (the picture's input)."""
    import redis as redis_py

    from warmstart.infra.services import EmbeddedRedis, EmbeddedS3, apply_test_credentials
    from warmstart.infra.settings import load_settings
    from warmstart.snapshot.examples import EXAMPLE_MODELS
    from warmstart.snapshot.publish import publish_examples
    from warmstart.snapshot.stores.s3 import S3Store
    from warmstart.workers.client import Client

    shape = cfg.shape
    arrivals = schedule(shape, cfg.seed)
    root = Path(tempfile.mkdtemp(prefix="warmstart-bench-autoscale-", dir=cfg.workdir))
    apply_test_credentials()
    redis_server, s3 = EmbeddedRedis().start(), EmbeddedS3().start()
    result: dict[str, Any] = {"config": _config_json(cfg, len(arrivals)), "timelines": {}}
    try:
        store = S3Store(BUCKET, PREFIX, endpoint_url=s3.url)
        store.ensure_bucket()
        publish_examples(store, show_progress=False)
        inputs = {n: [e.golden_inputs(seed=s, batch=1) for s in range(4)] for n, e in EXAMPLE_MODELS.items() if n in shape.models()}
        services = {"redis": redis_server.url, "s3": s3.url}
        measured_start_s: float | None = None
        for mode in cfg.modes:
            redis_py.Redis.from_url(redis_server.url).flushdb()
            run = _Mode(mode, cfg, services, root)
            try:
                say(f"{mode}: starting workers and the beat")
                run.start(measured_start_s)
                measured_start_s = measured_start_s or run.start_to_ready_s  # the first mode's measures the lead
                client = Client(load_settings(**run.values))
                run.warm_up(client, inputs)
                start_s = math.ceil((time.time() + 1.0) / shape.minute_s) * shape.minute_s
                run.record_history(start_s)
                say(f"{mode}: replaying {len(arrivals)} requests over {shape.minutes * shape.minute_s:.0f} s")
                run.replay(client, arrivals, inputs, start_s)
                end_s = start_s + shape.minutes * shape.minute_s
                minutes = count_worker_minutes(run.scaler.lifetimes, start_s, end_s)
                result[mode] = {**summarise_mode(run.records, shape, minutes), "worker_start_to_ready_s": run.start_to_ready_s}
                result["timelines"][mode] = {"samples": run.samples, "requests": run.records}
                say(f"{mode}: {result[mode]}")
            finally:
                run.close()
        result["verdicts"] = verdicts(modes_of(result))
        return result
    finally:
        s3.stop()
        redis_server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _config_json(cfg: AutoscaleBenchConfig, requests: int) -> dict[str, Any]:
    s = cfg.shape
    return {
        "minute_s": s.minute_s, "night_min": s.night_min, "surge_min": s.surge_min, "after_min": s.after_min,
        "night_rate_per_s": s.night_rate_per_s, "surge_rate_per_s": s.night_rate_per_s * s.surge_factor,
        "requests": requests, "min_workers": cfg.min_workers, "max_workers": cfg.max_workers,
        "device_budget_bytes": cfg.device_budget_bytes, "history_days": cfg.history_days,
        "list_length": cfg.list_length, "stabilise_min": cfg.stabilise_min, "seed": cfg.seed,
    }  # fmt: skip
