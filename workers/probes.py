"""A worker's liveness and readiness, answered from memory (no broker round trip).

- **live** (``/healthz``): the heartbeat loop has run recently, whether Redis answered or
  not. A wedged process (its loop stuck) stops answering ok; a Redis outage does not make a
  worker "dead" (restarting it would only make it cold).
- **ready** (``/readyz``): the registry holds the worker (its last heartbeat was accepted,
  within the heartbeat TTL), the worker has decided what to warm at start (the planner's
  assignment, or its eager models) and every model of that list planned HOT is HOT and
  consuming its queue: a worker that joins is ready only once it is warm
  (:mod:`warmstart.workers.joining`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from warmstart.infra.settings import Settings
from warmstart.workers.pool import ModelPool


class WorkerProbes:
    """Heartbeat bookkeeping (set by the heartbeat loop) and the two probes built on it."""

    def __init__(self, settings: Settings, pool: ModelPool,
                 start: Callable[[], tuple[bool, dict[str, Any]]]) -> None:  # fmt: skip
        self.settings = settings
        self.pool = pool
        self.start = start  # Joining.readiness: (the start list is decided and HOT, details)
        self.started_s = time.monotonic()
        self.last_beat_s: float | None = None  # the loop ran (ok or not)
        self.last_beat_ok_s: float | None = None  # Redis accepted it
        self._lock = threading.Lock()

    def beat_done(self, ok: bool) -> None:
        now = time.monotonic()
        with self._lock:
            self.last_beat_s = now
            if ok:
                self.last_beat_ok_s = now

    def live(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        limit_s = self.settings.heartbeat_ttl_s + 2 * self.settings.heartbeat_interval_s
        since = now - (self.last_beat_s if self.last_beat_s is not None else self.started_s)
        return since <= limit_s, {"heartbeat_age_s": round(since, 3), "limit_s": limit_s}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        registered = self.last_beat_ok_s is not None and now - self.last_beat_ok_s <= self.settings.heartbeat_ttl_s
        warm, details = self.start()
        return registered and warm, {"worker": self.pool.worker, "registered": registered, **details}


def serve_probes(settings: Settings, metrics: Any, probes: WorkerProbes, log: Any) -> Any:
    """Start ``/metrics``, ``/healthz`` and ``/readyz`` on ``WARMSTART_METRICS_PORT`` (none
    when it is 0). A port in use is logged as an error and the worker serves on without them:
    its requests matter more than its probes (and a probe that cannot connect says so)."""
    from warmstart.infra.errors import ServiceError
    from warmstart.infra.http import ProbeServer
    from warmstart.workers.metrics import PoolCollector

    if not settings.metrics_port:
        return None
    metrics.registry.register(PoolCollector(probes.pool, probes.ready))
    try:
        server = ProbeServer(settings.metrics_host, settings.metrics_port, metrics.registry,
                             {"/healthz": probes.live, "/readyz": probes.ready}).start()  # fmt: skip
    except ServiceError as e:
        log.error("no /metrics, /healthz or /readyz on this worker: %s", e)
        return None
    log.info("metrics and probes on http://%s:%d/metrics (/healthz, /readyz)", settings.metrics_host, server.port)
    return server
