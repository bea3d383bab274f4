"""A worker's Prometheus metrics, and the pool that counts them (:class:`MeteredPool`).

Naming follows Prometheus: the ``warmstart_`` prefix, base units (seconds, bytes), ``_total``
for counters. Every per-model series carries ``model`` and ``worker`` labels.

Cost on the request path: one counter increment and one histogram observation per request
(prometheus_client's per-value locks, held for the arithmetic only), plus a dict lookup for
the model's label children, which are cached. Tiers and memory are not updated on the
request path at all: they are read from the pool when Prometheus scrapes
(:class:`PoolCollector`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from warmstart.infra.errors import WarmstartError
from warmstart.infra.tiers import Tier
from warmstart.workers.pool import ModelPool
from warmstart.workers.slots import PoolRegistry, Slot
from warmstart.workers.warmup import HealthResult

#: Forward and cold-wait buckets (seconds): sub-millisecond CPU models to minute-long loads.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class WorkerMetrics:
    """The counters and histograms of one worker, in their own registry (one per process)."""

    def __init__(self, worker: str, registry: CollectorRegistry | None = None) -> None:
        self.worker = worker
        self.registry = registry or CollectorRegistry()
        labels = ("model", "worker")
        r = self.registry
        self.requests = Counter("warmstart_requests", "Inference requests answered (ok or error).", labels, registry=r)
        self.request_errors = Counter("warmstart_request_errors", "Inference requests answered with an error.", labels, registry=r)
        self.cold_waits = Counter(
            "warmstart_cold_waits", "Requests that waited for the model to become HOT on this worker.", labels, registry=r)
        self.cold_wait_seconds = Counter(
            "warmstart_cold_wait_seconds", "Seconds requests waited for the model to become HOT (sum).", labels, registry=r)
        self.forward_seconds = Histogram(
            "warmstart_forward_seconds", "Seconds of a request's forward pass.", labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.transitions = Counter(
            "warmstart_tier_transitions", "Tier transitions, one step each.", (*labels, "from_tier", "to_tier"), registry=r)
        self.transition_seconds = Histogram(
            "warmstart_tier_transition_seconds", "Seconds of one tier transition step.", (*labels, "from_tier", "to_tier"),
            buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.health_failures = Counter(
            "warmstart_health_check_failures", "Golden health checks that failed.", labels, registry=r)
        self._children: dict[str, tuple[Any, Any, Any]] = {}

    def _per_model(self, model: str) -> tuple[Any, Any, Any]:
        children = self._children.get(model)
        if children is None:
            children = (self.requests.labels(model, self.worker), self.request_errors.labels(model, self.worker),
                        self.forward_seconds.labels(model, self.worker))  # fmt: skip
            self._children[model] = children
        return children

    def request(self, model: str, forward_s: float | None) -> None:
        """One request answered; ``forward_s`` None when it was answered with an error."""
        requests, errors, forward = self._per_model(model)
        requests.inc()
        if forward_s is None:
            errors.inc()
        else:
            forward.observe(forward_s)

    def cold_wait(self, model: str, seconds: float, count: int = 1) -> None:
        """``count`` requests each waited ``seconds`` for ``model`` to become HOT."""
        if count > 0:
            self.cold_waits.labels(model, self.worker).inc(count)
            self.cold_wait_seconds.labels(model, self.worker).inc(max(0.0, seconds) * count)

    def transition(self, model: str, source: str, target: str, seconds: float) -> None:
        self.transitions.labels(model, self.worker, source, target).inc()
        self.transition_seconds.labels(model, self.worker, source, target).observe(max(0.0, seconds))

    def health_failure(self, model: str) -> None:
        self.health_failures.labels(model, self.worker).inc()


class TransitionTap:
    """The pool's registry, with every recorded transition also counted in the metrics."""

    def __init__(self, registry: PoolRegistry, metrics: WorkerMetrics) -> None:
        self._registry = registry
        self._metrics = metrics

    def record_transition(self, model: str, source: str, target: str, seconds: float) -> None:
        self._metrics.transition(model, source, target, seconds)
        self._registry.record_transition(model, source, target, seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)


class MeteredPool(ModelPool):
    """A :class:`ModelPool` that counts requests, cold waits, forwards and failed checks.

    Cold waits are counted two ways, both measured on the worker: a request that reached
    this worker while its model was not HOT (it waited for the promotion inside the
    request), and, for a lazy pre-warm (sent for a waiting request) that made the model HOT,
    the requests queued at its start or still queued when the gate opened, at least one:
    each waited at least as long as that warm-up (a lower bound: the worker cannot see when
    a request was sent).
    """

    def __init__(self, *args: Any, metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics
        self.registry = TransitionTap(self.registry, metrics)

    def infer(self, model: str, inputs_payload: object) -> dict[str, Any]:
        slot = self.slots.get(model)
        cold = slot is None or slot.tier < Tier.HOT or slot.health == "failing"
        t0 = time.perf_counter()
        try:
            answer = super().infer(model, inputs_payload)
        except WarmstartError:
            self.metrics.request(model, None)
            raise
        forward_s = float(answer.get("forward_ms", 0.0)) / 1000
        self.metrics.request(model, forward_s)
        if cold:
            self.metrics.cold_wait(model, time.perf_counter() - t0 - forward_s)
        return answer

    def ensure(self, model: str, target: Tier | str = Tier.HOT, version: str | None = None, *, urgent: bool = False) -> Slot:
        if not urgent or Tier.parse(target) != Tier.HOT:
            return super().ensure(model, target, version, urgent=urgent)
        current = self.slots.get(model)
        if current is not None and current.tier == Tier.HOT and current.consuming:
            return super().ensure(model, target, version, urgent=urgent)
        before = self._waiting(model)
        t0 = time.perf_counter()
        slot = super().ensure(model, target, version, urgent=urgent)
        if slot.tier == Tier.HOT:
            # A lazy pre-warm is sent for a request that is sent right after it: at least one
            # request waited; those still queued when the gate opened waited as long.
            waited_s = time.perf_counter() - t0
            self.metrics.cold_wait(model, waited_s, max(1, before, self._waiting(model)))
        return slot

    def _waiting(self, model: str) -> int:
        try:
            return self.registry.queued_requests(model)
        except WarmstartError:
            return 0

    def _check(self, slot: Slot) -> HealthResult:
        result = super()._check(slot)
        if not result.ok:
            self.metrics.health_failure(slot.model)
        return result


class PoolCollector(Collector):
    """Tiers and memory, read from the pool when Prometheus scrapes (nothing on the request path)."""

    def __init__(self, pool: ModelPool, ready: Any = None) -> None:
        self.pool = pool
        self.ready = ready

    def collect(self) -> Iterator[GaugeMetricFamily]:
        worker = self.pool.worker
        tier = GaugeMetricFamily(
            "warmstart_model_tier", "The model's tier on this worker: 0 REMOTE, 1 DISK, 2 HOST, 3 DEVICE, 4 HOT.",
            labels=("model", "worker"))  # fmt: skip
        consuming = GaugeMetricFamily(
            "warmstart_model_consuming", "1 while the worker consumes the model's queue (HOT and gated in).",
            labels=("model", "worker"))  # fmt: skip
        for model, slot in sorted(list(self.pool.slots.items())):
            tier.add_metric((model, worker), int(slot.tier))
            consuming.add_metric((model, worker), 1 if slot.consuming else 0)
        yield tier
        yield consuming
        settings = self.pool.settings
        budgets = {"device": settings.device_budget_bytes, "host": settings.host_budget_bytes, "cache": settings.cache_budget_bytes}
        usage = self.pool.usage()
        used = GaugeMetricFamily("warmstart_memory_used_bytes", "Bytes held per budget (device, host, cache).", labels=("worker", "tier"))
        budget = GaugeMetricFamily("warmstart_memory_budget_bytes", "Budget per tier (device, host, cache).", labels=("worker", "tier"))
        for name, limit in budgets.items():
            used.add_metric((worker, name), float(usage.get(f"{name}_bytes", 0)))
            budget.add_metric((worker, name), float(limit))
        yield used
        yield budget
        if self.ready is not None:
            ok = GaugeMetricFamily("warmstart_worker_ready", "1 when /readyz answers ok.", labels=("worker",))
            ok.add_metric((worker,), 1.0 if self.ready()[0] else 0.0)
            yield ok
