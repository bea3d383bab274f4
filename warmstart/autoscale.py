"""The local scaler: worker processes on this machine following the beat's ``desired_workers``.

A development tool (the demo, the tests, one big host), not the production path: on
Kubernetes, KEDA follows the same signal (``docs/deploy.md``).

Each step reads ``ws:scale:desired:default`` and clamps it to ``[min, max]``. Below the target
it starts workers (``warmstart worker`` children; each joins warm: the gate opens a model's
queue only once it is HOT). Above it, it stops one worker per step: one the signal lists as
draining, else the newest; first ``hand_over`` (its HOT models HOT elsewhere, bounded), then
SIGTERM (Celery's warm shutdown: running requests finish, prefetched ones go back). A signal
that cannot be read keeps the last good target; a worker that does not register within
``ready_timeout_s`` is logged and stopped.

The target can come from elsewhere (``target=``, a function returning a worker count or None
for "unknown"): the autoscale benchmark drives a queue-length scaler through the same code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from warmstart.infra.errors import SettingsError, UnknownWorkerError, WarmstartError
from warmstart.infra.redis_client import connect, redis_errors
from warmstart.processes import WorkerProcess
from warmstart.scheduler.scale_signal import DRAINING, read_desired
from warmstart.workers.handover import hand_over
from warmstart.workers.registry import WorkerRegistry

log = logging.getLogger(__name__)


class LocalScaler:
    """Starts and drains local worker processes to follow ``desired_workers``."""

    def __init__(self, redis_url: str, min_workers: int, max_workers: int, worker_settings: Mapping[str, object],
                 prefix: str = "auto", drain_timeout_s: float = 60.0, ready_timeout_s: float = 120.0,
                 target: Callable[[], int | None] | None = None, hand_over_first: bool = True,
                 concurrency: int | None = None) -> None:
        if min_workers < 0 or min_workers > max_workers:
            raise SettingsError(f"autoscale: --min {min_workers} must be between 0 and --max {max_workers}")
        self.client = connect(redis_url)
        self.registry = WorkerRegistry(self.client)
        self.min_workers, self.max_workers = min_workers, max_workers
        self.worker_settings = {**worker_settings, "redis_url": redis_url}
        self.prefix = prefix
        self.drain_timeout_s, self.ready_timeout_s = drain_timeout_s, ready_timeout_s
        self.workers: list[WorkerProcess] = []
        self._started_s: dict[str, float] = {}
        self._serial = 0
        self.target = min_workers
        self.history: list[tuple[float, int, int]] = []  # (time, target, workers)
        self.lifetimes: dict[str, list[float | None]] = {}  # worker -> [started, stopped] (time.time())
        self._target_source = target
        self.hand_over_first = hand_over_first
        self.concurrency = concurrency
        self._stop = threading.Event()

    def read_target(self) -> int:
        """The signal clamped to ``[min, max]``; the last good target when it cannot be read."""
        try:
            if self._target_source is not None:
                wanted = self._target_source()
            else:
                desired = read_desired(self.client)
                wanted = None if desired is None else int(desired["workers"])
        except WarmstartError as e:
            log.error("autoscale: cannot read the target (%s); keeping %d", e, self.target)
            return self.target
        if wanted is not None:
            self.target = max(self.min_workers, min(self.max_workers, wanted))
        return self.target

    def step(self) -> None:
        target = self.read_target()
        self._reap()
        if len(self.workers) < target:
            for _ in range(target - len(self.workers)):
                self._start()
        elif len(self.workers) > target:
            self._drain_one()
        self.history.append((time.time(), target, len(self.workers)))

    def _start(self) -> None:
        self._serial += 1
        name = f"{self.prefix}-{self._serial}"
        worker = WorkerProcess(name, self.worker_settings, **({"concurrency": self.concurrency} if self.concurrency else {}))
        worker.start()
        self.lifetimes[name] = [time.time(), None]
        self.workers.append(worker)
        self._started_s[name] = time.monotonic()
        log.info("autoscale: started %s (%d workers)", name, len(self.workers))

    def _reap(self) -> None:
        alive_names = set(self.registry.workers()[0])
        for worker in list(self.workers):
            if not worker.alive():
                log.error("autoscale: worker %s exited:\n%s", worker.name, worker.output()[-2000:])
                self._remove(worker)
            elif worker.name not in alive_names and time.monotonic() - self._started_s[worker.name] > self.ready_timeout_s:
                log.error("autoscale: worker %s did not register within %.0f s; stopping it", worker.name, self.ready_timeout_s)
                worker.stop()
                self._remove(worker)

    def _drain_one(self) -> None:
        try:
            with redis_errors(self.client, "reading the draining workers"):
                chosen = set(self.client.smembers(DRAINING))
        except WarmstartError:
            chosen = set()
        ours = [w for w in self.workers if w.name in chosen] or self.workers[-1:]
        worker = ours[0]
        try:
            pending = hand_over(self.registry, worker.name, self.drain_timeout_s) if self.hand_over_first else []
        except UnknownWorkerError:
            pending = []  # it never registered (or already left): it holds nothing to hand over
        if pending:
            log.warning("autoscale: %s stops with %s HOT nowhere else (drain timed out)", worker.name, pending)
        worker.stop()
        self._remove(worker)
        log.info("autoscale: drained %s (%d workers)", worker.name, len(self.workers))

    def _remove(self, worker: WorkerProcess) -> None:
        self.workers.remove(worker)
        self._started_s.pop(worker.name, None)
        worker.close()
        self.lifetimes[worker.name][1] = time.time()

    def run(self, interval_s: float = 1.0) -> None:
        """Step every ``interval_s`` until :meth:`stop`; then stop every worker."""
        try:
            while not self._stop.is_set():
                try:
                    self.step()
                except WarmstartError as e:
                    log.error("autoscale step failed: %s", e)
                self._stop.wait(interval_s)
        finally:
            for worker in list(self.workers):
                self._remove(worker)

    def stop(self) -> None:
        self._stop.set()
