"""``warmstart bench faults``: does every accepted request get exactly one right answer (or a
typed error) while workers, beats, Redis and S3 fail under load?

One run starts its own redis-server and S3 (moto), publishes the example models, starts two
workers (``prod`` profile, each with its own empty cache) and two beats, and sends a fixed
rate of requests (a seeded mix by the examples' traffic shares) from a few client threads
with :class:`warmstart.workers.client.Client`. While the load runs it injects, spread over
it: SIGKILL of a worker, a Redis restart (empty, same port), SIGKILL of the beat that holds
the lease, SIGTERM of another worker (each killed or stopped worker and beat is replaced at
once), and an S3 outage (S3 comes back empty on the same port and the same models are
published again). Every answer is compared with a forward of the same restored weights on
the same inputs in this process.

Modules: :mod:`warmstart.bench.faults_load` (plan, client threads, answer check, execution
monitor), :mod:`warmstart.bench.faults_cluster` (services, processes, faults),
:mod:`warmstart.bench.faults_observe` (memory sampler, Redis keys, process logs) and
:mod:`warmstart.bench.faults_report` (counters, targets, tables). See docs/benchmarks.md.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmstart.bench.faults_cluster import FAULTS, Cluster, fault_times
from warmstart.bench.faults_load import (
    ExecutionMonitor,
    LoadDriver,
    Reference,
    count_executions,
    plan_requests,
)
from warmstart.bench.faults_observe import Sampler, redelivered, redis_keys
from warmstart.bench.faults_report import HEADLINE_KEYS, TARGETS, faults_tables, summarise
from warmstart.bench.report import environment

__all__ = ["FAULTS", "HEADLINE_KEYS", "TARGETS", "FaultBenchConfig", "faults_tables", "run_faults_benchmark"]

MiB = 1024 * 1024
INITIAL_WORKERS = 2
INITIAL_BEATS = 2


@dataclass(frozen=True)
class FaultBenchConfig:
    """One run of the fault benchmark.

    Attributes:
        requests: requests planned (all are sent, retried while sending fails).
        rate_per_s: the fixed sending rate.
        clients: client threads sending (answers are awaited on a pool of waiter threads).
        faults: the faults to inject, in order, spread evenly over the load.
        answer_timeout_s: how long a sent request may wait for its answer before it is lost;
            also how long sending one may be retried before it counts as unsent.
        s3_outage_s: how long S3 stays down.
        redis_down_s: how long Redis stays down between its stop and its start.
        visibility_timeout_s: when a dead worker's unacknowledged request goes to another.
        worker_concurrency: task threads per worker.
        inputs_per_model: distinct prepared inputs per model (each with its reference answer).
        seed: seeds the request mix.
        workdir: parent of the run's temporary directory (removed afterwards).
        logs_dir: where to keep every child process's full log (None: not kept).
        ready_timeout_s: the longest wait for the first workers to serve.
    """

    requests: int = 3000
    rate_per_s: float = 40.0
    clients: int = 4
    faults: tuple[str, ...] = FAULTS
    answer_timeout_s: float = 60.0
    s3_outage_s: float = 8.0
    redis_down_s: float = 1.0
    visibility_timeout_s: float = 5.0
    worker_concurrency: int = 4
    inputs_per_model: int = 8
    seed: int = 7
    workdir: Path | None = None
    logs_dir: Path | None = None
    ready_timeout_s: float = 180.0

    @property
    def load_s(self) -> float:
        return self.requests / self.rate_per_s

    @property
    def waiters(self) -> int:
        """Waiter threads: enough that requests waiting out the answer timeout (lost ones)
        do not hold up the reading of the others' answers."""
        return int(min(512, max(64, 4 * self.rate_per_s)))


def build_references(store: Any, root: Path, inputs_per_model: int) -> dict[str, list[Reference]]:
    """Restore every example model from the store in this process and record its answer to
    ``inputs_per_model`` prepared single-row requests, with the tolerance of its golden check."""
    from warmstart.snapshot.cache import SnapshotCache
    from warmstart.snapshot.catalog import read_manifest, resolve_version
    from warmstart.snapshot.examples import EXAMPLE_MODELS
    from warmstart.snapshot.restore import restore_model
    from warmstart.workers.warmup import run_model

    cache = SnapshotCache(root / "reference-cache", 1024 * MiB)
    references: dict[str, list[Reference]] = {}
    for name, example in EXAMPLE_MODELS.items():
        manifest = read_manifest(store, name, resolve_version(store, name))
        module = restore_model(cache.fetch(store, manifest).weights_path, manifest)
        references[name] = []
        for i in range(inputs_per_model):
            inputs = example.golden_inputs(seed=1000 + i, batch=1)
            outputs = {k: v.clone() for k, v in run_model(module, inputs).items()}
            references[name].append(Reference(inputs, outputs, manifest.golden.rtol, manifest.golden.atol))
    return references


def _progress(driver: LoadDriver, clock: Any, say: Any, stop: threading.Event, every_s: float = 10.0) -> None:
    while not stop.wait(every_s):
        outcomes = Counter(r.outcome for r in driver.records if r.first_try_s is not None)
        sent = sum(1 for r in driver.records if r.id is not None)
        say(f"[{clock():7.2f} s] sent {sent}, ok {outcomes['ok']}, typed {outcomes['typed']}, "
            f"untyped {outcomes['untyped']}, lost {outcomes['lost']}, wrong {outcomes['wrong']}, "
            f"waiting {outcomes['pending']}")  # fmt: skip


def run_faults_benchmark(config: FaultBenchConfig, progress: Any = None) -> dict[str, Any]:
    """Run the whole benchmark and return its JSON result (see docs/benchmarks.md).

    Everything it starts or writes (services, processes, the temp dir) is stopped and removed
    before it returns or raises, KeyboardInterrupt included.

    Raises:
        ValueError: an unknown fault name.
        WarmstartError: a service or the first workers could not be started.
    """
    from warmstart.infra.errors import ServiceError
    from warmstart.infra.services import apply_test_credentials
    from warmstart.infra.settings import load_settings
    from warmstart.snapshot.examples import EXAMPLE_MODELS
    from warmstart.workers.client import Client

    say = progress or (lambda _line: None)
    load_s = config.load_s
    schedule = fault_times(load_s, config.faults, offset_s=0.5 / config.rate_per_s) if config.faults else []
    if config.workdir is not None:
        Path(config.workdir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="warmstart-bench-faults-", dir=config.workdir))
    apply_test_credentials()
    start = [time.monotonic()]  # moved to the start of the load

    def clock() -> float:
        return time.monotonic() - start[0]

    cluster = Cluster(root, clock, say, worker_concurrency=config.worker_concurrency,
                      visibility_timeout_s=config.visibility_timeout_s, answer_timeout_s=config.answer_timeout_s,
                      redis_down_s=config.redis_down_s, s3_outage_s=config.s3_outage_s)  # fmt: skip
    client = driver = monitor = sampler = None
    stop_progress = threading.Event()
    try:
        say("setup: starting redis-server and S3 (moto), publishing the example models")
        cluster.start_services()
        say(f"setup: published {len(EXAMPLE_MODELS)} models in {cluster.publish_s:.1f} s; "
            "restoring them here for the reference answers")  # fmt: skip
        references = build_references(cluster.store, root, config.inputs_per_model)
        say(f"setup: starting {INITIAL_WORKERS} workers and {INITIAL_BEATS} beats")
        workers = [cluster.start_worker() for _ in range(INITIAL_WORKERS)]
        for _ in range(INITIAL_BEATS):
            cluster.start_beat()
        for worker in workers:
            worker.wait_ready(config.ready_timeout_s)
        if cluster.wait_until(cluster.serving, config.ready_timeout_s) is None:
            raise ServiceError(f"the eager models were not HOT on a worker within {config.ready_timeout_s:g} s:\n"
                               + "\n".join(w.output()[-3000:] for w in workers))  # fmt: skip
        client = Client(load_settings(**cluster.settings()))
        plan = plan_requests(config.requests, config.rate_per_s,
                             {n: e.traffic_share for n, e in EXAMPLE_MODELS.items()}, config.inputs_per_model,
                             config.seed)  # fmt: skip
        start[0] = time.monotonic()
        monitor = ExecutionMonitor(cluster.redis.url, clock).start()
        sampler = Sampler(lambda: cluster.redis.url, cluster.alive_workers, clock).start()
        driver = LoadDriver(client, plan, references, clock, clients=config.clients, waiters=config.waiters,
                            answer_timeout_s=config.answer_timeout_s, send_give_up_s=config.answer_timeout_s)  # fmt: skip
        driver.start()
        cluster.watch_exits()
        threading.Thread(target=_progress, args=(driver, clock, say, stop_progress), daemon=True).start()
        say(f"load: {config.requests} requests at {config.rate_per_s:g}/s for {load_s:.0f} s; faults at "
            + (", ".join(f"{t:.1f} s {f}" for t, f in schedule) or "none"))  # fmt: skip
        for at, fault in schedule:
            delay = at - clock()
            if delay > 0:
                time.sleep(delay)
            cluster.inject(fault)
        driver.wait_sent(timeout_s=load_s + config.answer_timeout_s + 60)
        load_end_s = clock()
        say(f"[{load_end_s:7.2f} s] every request sent or given up; waiting for the last answers")
        stuck = driver.wait_answered(config.answer_timeout_s + 30)
        cluster.join_followers(timeout_s=30)
        cluster.stop_watching()
        stop_progress.set()
        sampler.stop()
        monitor.stop()
        records = [r.to_dict() for r in driver.records]
        ids = [r["id"] for r in records if r["id"] is not None]
        redis_url = cluster.redis.url
        conditions = {
            "requests": config.requests, "rate_per_s": config.rate_per_s, "load_s": load_s,
            "clients": config.clients, "waiters": config.waiters, "faults": list(config.faults),
            "fault_plan_s": [[t, f] for t, f in schedule], "answer_timeout_s": config.answer_timeout_s,
            "send_give_up_s": config.answer_timeout_s, "visibility_timeout_s": config.visibility_timeout_s,
            "redis_down_s": config.redis_down_s, "s3_outage_s": config.s3_outage_s,
            "initial_workers": INITIAL_WORKERS, "initial_beats": INITIAL_BEATS,
            "worker_concurrency": config.worker_concurrency, "inputs_per_model": config.inputs_per_model,
            "seed": config.seed, "publish_s": cluster.publish_s,
            "models": {n: {"traffic_share": e.traffic_share, "eager": e.eager} for n, e in EXAMPLE_MODELS.items()},
            "requests_per_model": dict(Counter(p.model for p in plan)),
            "settings": {k: v for k, v in cluster.settings().items() if k not in ("redis_url", "s3_endpoint_url", "cache_dir")},
            "environment": environment(),
        }  # fmt: skip
        extra = {
            "monitor": {"messages": monitor.messages, "gaps_s": monitor.gaps},
            "redelivered_by_workers": redelivered(redis_url, ids),
            "redis_keys_at_end": redis_keys(redis_url),
            "send_failure_messages": driver.send_failure_messages,
            "waits_not_returned": stuck,
            "processes": cluster.process_report(config.logs_dir),
        }
        return summarise(records, count_executions(monitor.observed, ids), monitor.observed, sampler.samples,
                         cluster.timeline.events, load_end_s=load_end_s, conditions=conditions, extra=extra)  # fmt: skip
    finally:
        stop_progress.set()
        cluster.stop_watching()
        if driver is not None:
            driver.stop()
            driver.release()
        if sampler is not None:
            sampler.stop()
        if monitor is not None:
            monitor.stop()
        if client is not None:
            client.close()
            client.app.close()
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
