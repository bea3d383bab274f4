"""The worker process: its pool, its background loops, and Celery's signals that start them.

A warmstart worker is a Celery worker with the ``threads`` pool, so that the
models it holds live in the one process that consumes their queues. At start it pays torch's
one-time initialisation, consumes only its own control queue and the shared pre-warm queue,
and warms the planner's assignment, or its eager models when no beat plans
(:mod:`warmstart.workers.joining`); a model's inference queue is consumed only once that model
is HOT.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import kombu.exceptions
import redis
from celery import Celery
from celery.signals import celeryd_after_setup, worker_ready, worker_shutdown

from warmstart.infra.celery_app import PREWARM_QUEUE, TASK_ECHO, TASK_PREWARM, app_settings, control_queue, infer_queue
from warmstart.infra.errors import StateUnavailableError, WarmstartError, WorkerError
from warmstart.infra.redis_client import connect
from warmstart.infra.settings import Settings
from warmstart.snapshot.cache import SnapshotCache
from warmstart.snapshot.process import prepare_architectures, prepare_process, resolve_device
from warmstart.snapshot.stores import open_store
from warmstart.workers.handover import hand_over, not_leaving
from warmstart.workers.joining import Joining
from warmstart.workers.metrics import MeteredPool, WorkerMetrics
from warmstart.workers.probes import WorkerProbes, serve_probes
from warmstart.workers.registry import WorkerRegistry

log = logging.getLogger(__name__)

#: Errors of a broker connection (Redis restarting, a pooled connection it closed).
_BROKER_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, kombu.exceptions.OperationalError, OSError)


class CeleryGate:
    """Opens and closes inference queues on this worker through Celery's remote control.

    The broadcast is handled by the worker's own event loop, the one thread that may touch
    its consumers, so it is safe to call from task and background threads.
    """

    def __init__(self, app: Celery, nodename: str, control_queue: str) -> None:
        self.app = app
        self.nodename = nodename
        self.control_queue = control_queue

    def open(self, model: str) -> None:
        """Start consuming the model's queue.

        Raises:
            StateUnavailableError: the broker could not be reached after a few tries.
        """
        # Wait until the consumer is added, then wake the worker's pending BRPOP (kombu's Redis
        # transport blocks up to a second on the queues it had) with a no-op on its own
        # control queue, so the new queue is polled at once rather than up to 1 s later.
        self._retrying(f"opening the queue of {model!r}", lambda: self.app.control.add_consumer(
            infer_queue(model), destination=[self.nodename], reply=True, timeout=5.0))
        self._retrying("waking the worker's poll", lambda: self.app.send_task(
            TASK_ECHO, kwargs={"payload": "wake"}, queue=self.control_queue, ignore_result=True))

    def close(self, model: str) -> None:
        """Stop consuming the model's queue.

        Raises:
            StateUnavailableError: the broker could not be reached after a few tries.
        """
        self._retrying(f"closing the queue of {model!r}", lambda: self.app.control.cancel_consumer(
            infer_queue(model), destination=[self.nodename], reply=False))

    @staticmethod
    def _retrying(doing: str, call: Any) -> None:
        # A pooled broker connection that a Redis restart closed fails once, then kombu
        # replaces it: a couple of quick retries ride that out.
        for attempt in range(3):
            try:
                call()
                return
            except _BROKER_ERRORS as e:
                if attempt == 2:
                    raise StateUnavailableError(f"the broker failed while {doing}: {e}") from e
                time.sleep(0.2 * (attempt + 1))

    def request_prewarm(self, model: str, claim: str | None = None) -> None:
        # The claim's token is the task's id, so the pre-warm releases that claim and no other.
        self.app.send_task(TASK_PREWARM, kwargs={"model": model, "tier": "HOT", "lazy": True},
                           queue=PREWARM_QUEUE, task_id=claim)  # fmt: skip


class WorkerRuntime:
    """Everything one worker process holds besides Celery itself."""

    def __init__(self, app: Celery, settings: Settings, nodename: str) -> None:
        self.app = app
        self.settings = settings
        self.nodename = nodename
        self.name = settings.worker_name or nodename
        self.started_at = time.time()
        self.device = resolve_device(settings.device)
        self.registry = WorkerRegistry(connect(settings.redis_url))
        self.metrics = WorkerMetrics(self.name)
        self.pool = MeteredPool(
            settings,
            self.name,
            open_store(settings),
            SnapshotCache(
                settings.cache_dir,
                settings.cache_budget_bytes,
                concurrency=settings.fetch_concurrency,
                part_bytes=settings.fetch_part_bytes,
            ),
            self.registry,
            CeleryGate(app, nodename, control_queue(self.name)),
            self.device,
            metrics=self.metrics,
        )
        self._stop = threading.Event()
        self.joining = Joining(settings, self.registry, self.pool, self.name, self._stop)
        self.probes = WorkerProbes(settings, self.pool, self.joining.readiness)
        self._probe_server: Any = None
        self._threads: list[threading.Thread] = []

    def heartbeat_info(self) -> dict[str, Any]:
        return {
            "nodename": self.nodename,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "device": str(self.device),
            "profile": self.settings.profile,
            "control_queue": control_queue(self.name),
            "budgets": {
                "cache_bytes": self.settings.cache_budget_bytes,
                "host_bytes": self.settings.host_budget_bytes,
                "device_bytes": self.settings.device_budget_bytes,
            },
            "usage": self.pool.usage(),
        }

    def start_background(self) -> None:
        self._probe_server = serve_probes(self.settings, self.metrics, self.probes, log)
        try:  # an earlier worker of this name may have left marks: this one starts afresh
            self.registry.clear_assignment(self.name)
            not_leaving(self.registry.client, self.name)
        except WarmstartError as e:
            log.warning("could not clear what an earlier worker named %s left: %s", self.name, e)
        self._loop("heartbeat", self.settings.heartbeat_interval_s, self._beat, run_first=True)
        self._loop("health", self.settings.health_interval_s, self.pool.health_tick)
        if self.settings.verify_interval_s > 0:
            self._loop("verify", self.settings.verify_interval_s, self._verify_cache)
        thread = threading.Thread(target=self.joining.run, name="warmstart-joining", daemon=True)
        thread.start()
        self._threads.append(thread)

    def install_drain_on_term(self) -> None:
        """SIGTERM hands this worker's HOT models over first (at most ``drain_grace_s``),
        serving all the while, and only then starts Celery's warm shutdown (stop consuming,
        finish what runs, return what was prefetched). A second SIGTERM stops at once."""
        if self.settings.drain_grace_s <= 0:
            return
        from celery import platforms

        celery_handler = signal.getsignal(signal.SIGTERM)
        if not callable(celery_handler):
            return
        started = threading.Event()

        def drain_then_stop(*args: Any) -> None:
            try:
                pending = hand_over(self.registry, self.name, self.settings.drain_grace_s, poll_s=0.2)
                if pending:
                    log.warning("stopping with %s HOT on no other worker (no room, no beat, or the grace "
                                "period ran out)", ", ".join(pending))  # fmt: skip
                else:
                    log.info("every HOT model is HOT on another worker: stopping")
            except WarmstartError as e:
                log.warning("could not hand the models over (%s): stopping", e)
            finally:
                celery_handler(*args)  # sets Celery's warm-shutdown flag (safe from a thread)

        def on_term(*args: Any) -> None:
            if started.is_set():
                celery_handler(*args)
                return
            started.set()
            log.warning("SIGTERM: handing the models over (at most %.0f s) before stopping", self.settings.drain_grace_s)
            threading.Thread(target=drain_then_stop, args=args, name="warmstart-drain", daemon=True).start()

        try:
            platforms.signals["SIGTERM"] = on_term
        except ValueError as e:  # not the main thread: Celery's own handler stays
            log.warning("SIGTERM will not hand models over: %s", e)

    def _beat(self) -> None:
        # The registry answers True when it had lost this worker (Redis restarted empty, or
        # the heartbeat expired): publish every model again, so the hot sets are whole again
        # within one heartbeat.
        ok = False
        try:
            if self.registry.heartbeat(self.name, self.heartbeat_info(), self.settings.heartbeat_ttl_s):
                self.pool.republish()
            ok = True
        finally:
            self.probes.beat_done(ok)  # liveness and readiness (workers/probes.py)

    def _verify_cache(self) -> None:
        self.pool.verify_cached(self.settings.verify_bytes_per_interval)

    def _loop(self, name: str, interval_s: float, body: Any, run_first: bool = False) -> None:
        def once() -> None:
            try:
                body()
            except Exception:  # a loop that dies silently would stop heartbeats or checks
                log.exception("warmstart %s loop failed; continuing", name)

        def run() -> None:
            if run_first:
                once()
            while not self._stop.wait(interval_s):
                once()

        thread = threading.Thread(target=run, name=f"warmstart-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        if self._probe_server is not None:
            self._probe_server.stop()
        try:
            self.registry.forget_worker(self.name)
            not_leaving(self.registry.client, self.name)
        except WarmstartError:
            log.warning("could not remove %s from the registry at shutdown", self.name)


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()
_nodename: str | None = None


def current_runtime() -> WorkerRuntime:
    """The runtime of this worker process (built on first use)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            from warmstart.infra.celery_app import app

            if _nodename is None:
                raise WorkerError("warmstart tasks run only inside a warmstart worker process")
            _runtime = WorkerRuntime(app, app_settings(app), _nodename)
        return _runtime


@celeryd_after_setup.connect
def _after_setup(sender: str, instance: Any, **_: Any) -> None:
    """Pick the queues this worker starts with and pay torch's one-time initialisation."""
    global _nodename
    pool_name = getattr(instance.pool_cls, "__module__", "") + "." + getattr(instance.pool_cls, "__name__", "")
    if "thread" not in pool_name:
        # Models live in the worker process itself and are gated from task threads while the
        # event loop runs: prefork would copy them per child, solo would block the loop.
        # SystemExit, not an exception: Celery logs and ignores exceptions from signal handlers.
        raise SystemExit(
            f"error: warmstart workers need the threads pool (got {pool_name}). Start with "
            "`warmstart worker` or `celery -A warmstart.app worker -P threads`"
        )
    _nodename = sender
    settings = app_settings(instance.app)
    name = settings.worker_name or sender
    queues = instance.app.amqp.queues
    queues.select(control_queue(name))
    queues.select_add(PREWARM_QUEUE)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    prepare_process(settings.device)
    # Import and build every registered architecture once, so no request pays an import.
    prepare_architectures(settings.allowed_architectures)


@worker_ready.connect
def _on_ready(**_: Any) -> None:
    runtime = current_runtime()
    runtime.start_background()
    runtime.install_drain_on_term()  # after Celery installed its own handler


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    if _runtime is not None:
        _runtime.stop()
