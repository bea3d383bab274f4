"""In-memory doubles of the pool's two seams, for tests without Redis or Celery.

:class:`StubGate` stands in for :class:`~warmstart.workers.runtime.CeleryGate` (which opens and
closes inference queues through Celery's remote control) and :class:`StubRegistry` for
:class:`~warmstart.workers.registry.WorkerRegistry` (the shared state in Redis). They have the
real interfaces and keep what they are told, so that a test can drive a
:class:`~warmstart.workers.pool.ModelPool` from threads and assert on what it published, in
the way dramatiq's ``StubBroker`` stands in for its brokers. They are part of the library:
users can test code around a pool with them too.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from typing import Any


class StubGate:
    """Records which inference queues are open; counts lazy pre-warm requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open_queues: set[str] = set()
        #: ``("open" | "close" | "prewarm", model)`` in call order.
        self.events: list[tuple[str, str]] = []

    def open(self, model: str) -> None:
        with self._lock:
            self.open_queues.add(model)
            self.events.append(("open", model))

    def close(self, model: str) -> None:
        with self._lock:
            self.open_queues.discard(model)
            self.events.append(("close", model))

    def request_prewarm(self, model: str, claim: str | None = None) -> None:
        with self._lock:
            self.events.append(("prewarm", model))

    def count(self, kind: str, model: str | None = None) -> int:
        with self._lock:
            return sum(1 for k, m in self.events if k == kind and (model is None or m == model))


class StubRegistry:
    """The registry's state in dicts, behind one lock; the same methods as the Redis one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.heartbeats: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.hot: dict[str, set[str]] = defaultdict(set)
        self.costs: dict[str, dict[str, float]] = defaultdict(dict)
        self.claims: dict[str, tuple[str, float]] = {}
        self.redeliveries: dict[str, int] = defaultdict(int)
        #: Requests waiting per model queue; tests set it to exercise the rescue path.
        self.queued: dict[str, int] = defaultdict(int)

    def heartbeat(self, worker: str, info: dict[str, Any], ttl_s: float) -> bool:
        """True when the registry did not know the worker (as after Redis restarted empty)."""
        with self._lock:
            known = worker in self.heartbeats
            self.heartbeats[worker] = {**info, "name": worker, "heartbeat_at": time.time()}
            return not known

    def put_model(self, worker: str, state: dict[str, Any]) -> None:
        model = state["model"]
        with self._lock:
            self.models[worker][model] = dict(state)
            if state.get("tier") == "HOT" and state.get("consuming", False):
                self.hot[model].add(worker)
            else:
                self.hot[model].discard(worker)

    def remove_model(self, worker: str, model: str) -> None:
        with self._lock:
            self.models[worker].pop(model, None)
            self.hot[model].discard(worker)

    def forget_worker(self, worker: str) -> None:
        with self._lock:
            for model in self.models.pop(worker, {}):
                self.hot[model].discard(worker)
            self.heartbeats.pop(worker, None)

    def record_transition(self, model: str, source: str, target: str, seconds: float) -> None:
        with self._lock:
            self.costs[model][f"{source}>{target}"] = seconds

    def count_redelivery(self, task_id: str, ttl_s: float = 86400.0) -> int:
        with self._lock:
            self.redeliveries[task_id] += 1
            return self.redeliveries[task_id]

    def claim_prewarm(self, model: str, ttl_s: float) -> str | None:
        """A token for the one caller that may send a lazy pre-warm now, else None."""
        now = time.monotonic()
        with self._lock:
            if model in self.claims and self.claims[model][1] > now:
                return None
            token = uuid.uuid4().hex
            self.claims[model] = (token, now + ttl_s)
            return token

    def release_prewarm(self, model: str, token: str | None = None) -> bool:
        """Release the claim; with a token, only when it is that claim."""
        with self._lock:
            held = self.claims.get(model)
            if held is None or (token is not None and held[0] != token):
                return False
            del self.claims[model]
            return True

    def workers(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        with self._lock:
            return dict(self.heartbeats), []

    def models_of(self, worker: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {m: dict(s) for m, s in self.models[worker].items()}

    def hot_workers(self, model: str) -> list[str]:
        with self._lock:
            return sorted(self.hot[model])

    def queued_requests(self, model: str) -> int:
        with self._lock:
            return self.queued[model]

    def transition_costs(self, model: str) -> dict[str, float]:
        with self._lock:
            return dict(self.costs[model])
