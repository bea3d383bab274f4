"""The fault benchmark's cluster: a private redis-server and S3 (moto), worker and beat child
processes, and the faults injected into them.

Each fault is injected at once and returns; what follows it (a replacement worker becoming
ready, the lease changing hands, S3 coming back and the models published again) is watched
on its own thread and written to the :class:`Timeline` as it happens.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from warmstart.bench.faults_observe import log_summary, unacked_snapshot

#: The faults, in the order a default run injects them.
FAULTS = ("kill-worker", "restart-redis", "kill-beat", "term-worker", "s3-outage")
BUCKET, PREFIX = "warmstart-faults", "models"
MiB = 1024 * 1024

Clock = Callable[[], float]
Say = Callable[[str], None]


def fault_times(load_s: float, faults: Sequence[str], offset_s: float = 0.0) -> list[tuple[float, str]]:
    """Spread the faults evenly over the load: the i-th of n at (i + 1) / (n + 1) of it, plus
    ``offset_s``, so there is load before the first, after the last, and between any two.
    (The run offsets them by half a send interval: a fault then never coincides with a send
    by construction.)

    Raises:
        ValueError: an unknown or repeated fault, or a load that is not positive.
    """
    unknown = [f for f in faults if f not in FAULTS]
    if unknown or len(set(faults)) != len(faults):
        raise ValueError(f"faults must be distinct names among {', '.join(FAULTS)}; got {list(faults)}")
    if not load_s > 0:
        raise ValueError(f"the load must last a positive time, got {load_s}")
    n = len(faults)
    return [(load_s * (i + 1) / (n + 1) + offset_s, fault) for i, fault in enumerate(faults)]


def leader_pid(value: str | None) -> int | None:
    """The process id inside a beat lease value (``<host>-<pid>-<hex>``), or None."""
    if not value:
        return None
    parts = value.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1])


def cluster_settings(
    redis_url: str, s3_url: str, root: Path, *, visibility_timeout_s: float, answer_timeout_s: float
) -> dict[str, object]:
    """Settings of every worker, beat and of the benchmark's client: fast heartbeats and
    ticks, a short visibility timeout (a killed worker's requests go to another within
    seconds), one traffic minute per second, budgets that hold every example model."""
    from warmstart.snapshot.examples import EXAMPLE_MODELS

    return {
        "redis_url": redis_url,
        "store_url": f"s3://{BUCKET}/{PREFIX}",
        "s3_endpoint_url": s3_url,
        "cache_dir": str(root / "cache" / "client"),
        "device": "cpu",
        "profile": "prod",
        "eager_models": [name for name, example in EXAMPLE_MODELS.items() if example.eager],
        "cache_budget_bytes": 1024 * MiB,
        "host_budget_bytes": 512 * MiB,
        "device_budget_bytes": 256 * MiB,
        "torch_threads": 1,  # two workers and the client share the cores
        "traffic_minute_s": 1.0,
        "plan_interval_s": 1.0,
        "keep_warm_interval_s": 10.0,
        "health_interval_s": 5.0,
        "heartbeat_interval_s": 0.5,
        "heartbeat_ttl_s": 3.0,
        "visibility_timeout_s": visibility_timeout_s,
        "inference_timeout_s": answer_timeout_s,
    }


class Timeline:
    """What was injected, and what followed, in order (seconds after the load started)."""

    def __init__(self, clock: Clock, say: Say) -> None:
        self.clock = clock
        self.say = say
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, fault: str, event: str, at_s: float | None = None, **details: Any) -> dict[str, Any]:
        """Record an event, at ``at_s`` (taken just before a signal is sent) or now."""
        entry = {"t_s": self.clock() if at_s is None else at_s, "fault": fault, "event": event, **details}
        with self._lock:
            self.events.append(entry)
        extra = ", ".join(f"{k}={v}" for k, v in details.items())
        self.say(f"[{entry['t_s']:7.2f} s] {fault}: {event}{' (' + extra + ')' if extra else ''}")
        return entry


class Cluster:
    """The services and processes of one run, and the faults injected into them."""

    def __init__(self, root: Path, clock: Clock, say: Say, *, worker_concurrency: int, visibility_timeout_s: float,
                 answer_timeout_s: float, redis_down_s: float, s3_outage_s: float) -> None:  # fmt: skip
        self.root = root
        self.clock = clock
        self.say = say
        self.timeline = Timeline(clock, say)
        self.worker_concurrency = worker_concurrency
        self.visibility_timeout_s = visibility_timeout_s
        self.answer_timeout_s = answer_timeout_s
        self.redis_down_s = redis_down_s
        self.s3_outage_s = s3_outage_s
        self.redis: Any = None
        self.s3: Any = None
        self.store: Any = None
        self.sha256: dict[str, str] = {}  # model -> sha256 of the weights first published
        self._republished_same: bool | None = None
        self.publish_s = 0.0
        self.workers: list[Any] = []  # every worker started, in order (killed ones too)
        self.beats: list[Any] = []
        self.signalled: dict[str, str] = {}  # process name -> what the benchmark did to it
        self._started_s: dict[str, float] = {}
        self._followers: list[threading.Thread] = []
        self._exits_seen: set[str] = set()
        self._stop_watching = threading.Event()

    # --- services and processes -----------------------------------------------------------

    def start_services(self) -> None:
        from warmstart.infra.services import EmbeddedRedis, EmbeddedS3
        from warmstart.snapshot.stores.s3 import S3Store

        self.redis = EmbeddedRedis().start()
        self.s3 = EmbeddedS3().start()
        self.store = S3Store(BUCKET, PREFIX, endpoint_url=self.s3.url)
        self.publish_s = self._publish()

    def _publish(self) -> float:
        from warmstart.snapshot.publish import publish_examples

        t0 = time.perf_counter()
        self.store.ensure_bucket()
        manifests = publish_examples(self.store, show_progress=False)
        self.sha256 = self.sha256 or {m.model: m.weights.sha256 for m in manifests}
        self._republished_same = all(self.sha256.get(m.model) == m.weights.sha256 for m in manifests)
        return time.perf_counter() - t0

    def settings(self, worker: str | None = None) -> dict[str, object]:
        values = cluster_settings(self.redis.url, self.s3.url, self.root, visibility_timeout_s=self.visibility_timeout_s,
                                  answer_timeout_s=self.answer_timeout_s)  # fmt: skip
        if worker is not None:  # a worker of its own machine: its own, empty cache
            values["cache_dir"] = str(self.root / "cache" / worker)
        return values

    def start_worker(self) -> Any:
        from warmstart.processes import WorkerProcess

        name = f"faults-w{len(self.workers) + 1}"
        worker = WorkerProcess(name, self.settings(name), concurrency=self.worker_concurrency)
        worker.start()
        self.workers.append(worker)
        self._started_s[name] = self.clock()
        return worker

    def start_beat(self) -> Any:
        from warmstart.processes import ChildProcess

        beat = ChildProcess(["beat", "--loglevel", "WARNING"], self.settings())
        beat.name = f"beat-{len(self.beats) + 1}"  # type: ignore[attr-defined]
        beat.start()
        self.beats.append(beat)
        return beat

    def registry(self) -> Any:
        from warmstart.infra.redis_client import connect
        from warmstart.workers.registry import WorkerRegistry

        return WorkerRegistry(connect(self.redis.url, timeout_s=1.0))

    def eager_models(self) -> list[str]:
        return list(self.settings()["eager_models"])  # type: ignore[arg-type]

    def serving(self) -> bool:
        """Whether every eager model is HOT on a live worker of this run (the hot sets in
        Redis still name a killed worker until the beat declares it dead)."""
        from warmstart.infra.errors import WarmstartError

        alive = set(self.alive_workers())
        try:
            registry = self.registry()
            return all(alive.intersection(registry.hot_workers(m)) for m in self.eager_models())
        except WarmstartError:
            return False

    def wait_until(self, condition: Callable[[], bool], timeout_s: float) -> float | None:
        """Seconds until ``condition()`` holds (polled every 0.1 s), None if it did not in time."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if condition():
                return time.monotonic() - t0
            time.sleep(0.1)
        return None

    def registered(self, worker: Any) -> bool:
        """Whether ``worker`` is alive and its heartbeat is in the registry."""
        from warmstart.infra.errors import WarmstartError

        try:
            return worker.alive() and worker.name in self.registry().workers()[0]
        except WarmstartError:
            return False

    def alive_workers(self) -> dict[str, int]:
        return {w.name: w.process.pid for w in self.workers if w.alive()}

    # --- faults -----------------------------------------------------------------------------

    def inject(self, fault: str) -> None:
        {
            "kill-worker": self.kill_worker,
            "term-worker": self.term_worker,
            "kill-beat": self.kill_beat,
            "restart-redis": self.restart_redis,
            "s3-outage": self.s3_outage,
        }[fault]()

    def _victim(self) -> Any | None:
        """The earliest-started worker that is alive and was not signalled yet."""
        return next((w for w in self.workers if w.alive() and w.name not in self.signalled), None)

    def _follow(self, body: Callable[[], None]) -> None:
        thread = threading.Thread(target=body, name="faults-follow", daemon=True)
        thread.start()
        self._followers.append(thread)

    def _replace(self, fault: str) -> None:
        replacement = self.start_worker()
        self.timeline.add(fault, "replacement worker started", worker=replacement.name)

        def watch_serving() -> None:
            after = self.wait_until(self.serving, 180.0)
            self.timeline.add(fault, "every eager model HOT on a live worker" if after is not None else
                              "eager models not all HOT on a live worker within 180 s",
                              **({"after_s": round(after, 3)} if after is not None else {}))  # fmt: skip

        def watch_replacement() -> None:
            after = self.wait_until(lambda: self.registered(replacement), 180.0)
            self.timeline.add(fault, "replacement registered" if after is not None else
                              "replacement not registered within 180 s", worker=replacement.name,
                              **({"after_s": round(after, 3)} if after is not None else {}))  # fmt: skip

        self._follow(watch_serving)
        self._follow(watch_replacement)

    def _watch_unacked(self, fault: str) -> None:
        """Record which requests the broker holds unacknowledged right after a worker went,
        and which of them are still there once the visibility timeout has passed (they
        should have been handed to another worker by then)."""
        at_signal = unacked_snapshot(self.redis.url)
        self.timeline.add(fault, "unacknowledged deliveries in Redis", **at_signal)
        ids = set(at_signal.get("unacked_ids") or ())

        def watch() -> None:
            time.sleep(self.visibility_timeout_s + 3.0)
            later = unacked_snapshot(self.redis.url)
            still = sorted(ids & set(later.get("unacked_ids") or ()))
            self.timeline.add(fault, f"{self.visibility_timeout_s + 3.0:g} s later", still_unacked=still,
                              **{k: v for k, v in later.items() if k != "unacked_ids"})  # fmt: skip

        if ids:
            self._follow(watch)

    def kill_worker(self) -> None:
        victim = self._victim()
        if victim is None:
            self.timeline.add("kill-worker", "skipped: no worker to kill")
            return
        pid, at = victim.process.pid, self.clock()
        victim.kill()
        self.signalled[victim.name] = "SIGKILL"
        self.timeline.add("kill-worker", "SIGKILL", at, worker=victim.name, pid=pid)
        self._replace("kill-worker")
        self._watch_unacked("kill-worker")

    def term_worker(self) -> None:
        victim = self._victim()
        if victim is None:
            self.timeline.add("term-worker", "skipped: no worker to stop")
            return
        at = self.clock()
        victim.process.send_signal(signal.SIGTERM)
        self.signalled[victim.name] = "SIGTERM"
        self.timeline.add("term-worker", "SIGTERM", at, worker=victim.name, pid=victim.process.pid)
        t0 = time.monotonic()

        def watch_exit() -> None:
            try:
                code = victim.process.wait(60)
                self.timeline.add("term-worker", "worker exited", worker=victim.name, exit_code=code,
                                  after_s=round(time.monotonic() - t0, 3))  # fmt: skip
            except subprocess.TimeoutExpired:
                victim.kill()
                self.timeline.add("term-worker", "worker had not exited 60 s after SIGTERM: SIGKILLed", worker=victim.name)

        self._follow(watch_exit)
        self._replace("term-worker")
        self._watch_unacked("term-worker")

    def _leader(self) -> str | None:
        import redis

        try:
            value = redis.Redis.from_url(self.redis.url, socket_timeout=1.0, decode_responses=True).get(_leader_key())
            return value if isinstance(value, str) else None
        except redis.RedisError:
            return None

    def kill_beat(self) -> None:
        deadline = time.monotonic() + 5.0
        victim, lease = None, None
        while victim is None and time.monotonic() < deadline:
            lease = self._leader()
            victim = next((b for b in self.beats if b.alive() and b.process.pid == leader_pid(lease)), None)
            if victim is None:
                time.sleep(0.1)
        if victim is None:
            self.timeline.add("kill-beat", "skipped: no beat of this run held the lease", lease=lease)
            return
        at = self.clock()
        victim.kill()
        self.signalled[victim.name] = "SIGKILL"
        self.timeline.add("kill-beat", "SIGKILL to the lease holder", at, beat=victim.name, pid=victim.process.pid,
                          lease=lease)  # fmt: skip
        new_beat = self.start_beat()
        self.timeline.add("kill-beat", "new beat started", beat=new_beat.name)
        t0 = time.monotonic()

        def watch() -> None:
            while time.monotonic() - t0 < 60.0:
                value = self._leader()
                if value and value != lease:
                    holder = next((b.name for b in self.beats if b.process.pid == leader_pid(value)), value)
                    self.timeline.add("kill-beat", "lease taken over", beat=holder,
                                      after_s=round(time.monotonic() - t0, 3))  # fmt: skip
                    return
                time.sleep(0.1)
            self.timeline.add("kill-beat", "no beat took the lease within 60 s")

        self._follow(watch)

    def restart_redis(self) -> None:
        from warmstart.infra.services import EmbeddedRedis

        old = self.redis
        port, at = old.port, self.clock()
        old.stop()
        self.timeline.add("restart-redis", "redis-server stopped", at, port=port)
        time.sleep(self.redis_down_s)
        self.redis = EmbeddedRedis(max_message_bytes=old.max_message_bytes, port=port).start()
        self.timeline.add("restart-redis", "redis-server started again, empty, on the same port", port=port)
        t0 = time.monotonic()

        def watch() -> None:
            served = leader = None
            while time.monotonic() - t0 < 120.0 and (served is None or leader is None):
                if served is None and self.serving():
                    served = time.monotonic() - t0
                    self.timeline.add("restart-redis", "every eager model is HOT on a worker again",
                                      after_s=round(served, 3))  # fmt: skip
                if leader is None and self._leader():
                    leader = time.monotonic() - t0
                    self.timeline.add("restart-redis", "a beat holds the lease again", after_s=round(leader, 3))
                time.sleep(0.1)
            if served is None:
                self.timeline.add("restart-redis", "eager models not all HOT again within 120 s")

        self._follow(watch)

    def s3_outage(self) -> None:
        from warmstart.infra.services import EmbeddedS3

        port, at = self.s3.port, self.clock()
        self.s3.stop()
        self.timeline.add("s3-outage", "S3 stopped", at, port=port, for_s=self.s3_outage_s)

        def come_back() -> None:
            time.sleep(self.s3_outage_s)
            try:
                self.s3 = EmbeddedS3(port=port).start()
                self.timeline.add("s3-outage", "S3 started again, empty, on the same port", port=port)
                publish_s = self._publish()
                self.timeline.add("s3-outage", "example models published again", publish_s=round(publish_s, 3),
                                  same_bytes=self._republished_same)  # fmt: skip
            except Exception as e:  # noqa: BLE001 - recorded: the run goes on without S3
                self.timeline.add("s3-outage", "S3 could not be brought back", error=f"{type(e).__name__}: {e}")

        self._follow(come_back)

    def watch_exits(self) -> None:
        """Until :meth:`stop_watching`, record in the timeline (as ``unplanned-exit``) every
        worker or beat that exits without the benchmark having signalled it."""

        def watch() -> None:
            while not self._stop_watching.wait(0.25):
                for process in list(self.workers + self.beats):
                    if process.alive() or process.name in self.signalled or process.name in self._exits_seen:
                        continue
                    self._exits_seen.add(process.name)
                    lines = process.output().splitlines()
                    worst = ([line for line in lines if re.search(r"\bCRITICAL\b", line)]
                             or [line for line in lines if re.search(r"\bERROR\b", line)] or [""])  # fmt: skip
                    self.timeline.add("unplanned-exit", "exited without being signalled", process=process.name,
                                      exit_code=process.process.poll(), last_error=worst[-1][:200])  # fmt: skip

        threading.Thread(target=watch, name="faults-exits", daemon=True).start()

    def stop_watching(self) -> None:
        self._stop_watching.set()

    def join_followers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._followers:
            thread.join(max(0.0, deadline - time.monotonic()))

    # --- logs and teardown ------------------------------------------------------------------

    def process_report(self, logs_dir: Path | None = None) -> list[dict[str, Any]]:
        """Every child process: what the benchmark did to it, how it ended, what it logged."""
        report = []
        for role, processes in (("worker", self.workers), ("beat", self.beats)):
            for process in processes:
                text = process.output()
                if logs_dir is not None:
                    logs_dir.mkdir(parents=True, exist_ok=True)
                    (logs_dir / f"{process.name}.log").write_text(text)
                report.append({
                    "name": process.name, "role": role, "pid": process.process.pid,
                    "signalled": self.signalled.get(process.name), "exit_code": process.process.poll(),
                    "started_s": self._started_s.get(process.name), "log": log_summary(text),
                })  # fmt: skip
        return report

    def close(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL), then the services. Idempotent."""
        from concurrent.futures import ThreadPoolExecutor

        processes = [p for p in self.beats + self.workers if p.process is not None]
        for process in processes:
            if process.alive():
                process.process.send_signal(signal.SIGTERM)
        with ThreadPoolExecutor(max(1, len(processes))) as pool:
            list(pool.map(lambda p: p.close(), processes))
        for service in (self.redis, self.s3):
            if service is not None:
                service.stop()


def _leader_key() -> str:
    from warmstart.infra.redis_client import key

    return key("beat", "leader")
