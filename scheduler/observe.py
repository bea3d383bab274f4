"""The beat's metrics and probes: who holds the lease, how long ticks take, ``desired_workers``.

:class:`BeatProbes` times each tick of a :class:`~warmstart.scheduler.beat.BeatScheduler`
(the beat calls :meth:`BeatProbes.ticked` from its loop) and answers ``/healthz`` (the loop
ticked recently) and ``/readyz`` (its last tick read Redis without an error) from memory.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from warmstart.infra.settings import Settings

log = logging.getLogger(__name__)


class BeatMetrics:
    """The beat's series, in their own registry."""

    def __init__(self, beat_id: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.leader = Gauge("warmstart_beat_leader", "1 while this beat holds the lease and acts.", ("beat",), registry=r).labels(beat_id)
        self.tick_seconds = Histogram(
            "warmstart_beat_tick_seconds", "Seconds of one beat tick.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)  # fmt: skip
        self.tick_failures = Counter("warmstart_beat_tick_failures", "Ticks that failed (Redis or the store down).", registry=r)
        self.desired_workers = Gauge(
            "warmstart_desired_workers", "Workers the beat wants for the predicted demand (floor and ceiling applied).",
            ("pool",), registry=r)  # fmt: skip


class BeatProbes:
    """Tick bookkeeping and the two probes."""

    def __init__(self, settings: Settings, metrics: BeatMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.started_s = time.monotonic()
        self.last_tick_s: float | None = None
        self.last_ok_s: float | None = None
        self._lock = threading.Lock()

    def ticked(self, seconds: float, ok: bool, leader: bool | None) -> None:
        """One tick ended after ``seconds``; ``leader`` None when it failed before knowing."""
        now = time.monotonic()
        self.metrics.tick_seconds.observe(seconds)
        if not ok:
            self.metrics.tick_failures.inc()
        if leader is not None:
            self.metrics.leader.set(1 if leader else 0)
            if not leader:  # only the acting beat speaks for desired_workers
                self.metrics.desired_workers.clear()
        with self._lock:
            self.last_tick_s = now
            if ok:
                self.last_ok_s = now

    def _limit_s(self) -> float:
        return 3 * self.settings.plan_interval_s + 30.0  # a slow tick (store listing) is not a dead loop

    def live(self) -> tuple[bool, dict[str, Any]]:
        since = time.monotonic() - (self.last_tick_s if self.last_tick_s is not None else self.started_s)
        return since <= self._limit_s(), {"tick_age_s": round(since, 3), "limit_s": self._limit_s()}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        if self.last_ok_s is None:
            return False, {"last_ok_tick_age_s": None}
        since = time.monotonic() - self.last_ok_s
        return since <= self._limit_s(), {"last_ok_tick_age_s": round(since, 3)}


def serve_beat_probes(settings: Settings, probes: BeatProbes) -> Any:
    """``/metrics``, ``/healthz``, ``/readyz`` on ``WARMSTART_METRICS_PORT`` (none when 0).

    Raises:
        ServiceError: the port is in use (the beat exits with the message: start it with
            another ``WARMSTART_METRICS_PORT``).
    """
    from warmstart.infra.http import ProbeServer

    if not settings.metrics_port:
        return None
    server = ProbeServer(settings.metrics_host, settings.metrics_port, probes.metrics.registry,
                         {"/healthz": probes.live, "/readyz": probes.ready}).start()  # fmt: skip
    log.info("beat metrics and probes on http://%s:%d/metrics", settings.metrics_host, server.port)
    return server
