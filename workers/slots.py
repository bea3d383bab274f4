"""One model on a worker (:class:`Slot`), what a request leases (:class:`Lease`), and the two
seams the pool talks through: the registry and the queue gate (their real implementations are
in :mod:`~warmstart.workers.registry` and :mod:`~warmstart.workers.runtime`; in-memory doubles
in :mod:`~warmstart.workers.stub`). The locking rule is in :mod:`warmstart.workers.pool`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from warmstart.infra.errors import ModelStateError, WarmstartError
from warmstart.infra.tiers import Tier
from warmstart.snapshot.cache import LocalSnapshot
from warmstart.snapshot.manifest import Manifest
from warmstart.workers.warmup import WarmupResult

#: Retry a failing model after 1, 2, 4, … seconds, at most this many.
MAX_BACKOFF_S = 60.0
#: Recent requests kept per model, and the largest kept (16 MiB per model at most).
SAMPLES_KEPT = 16
SAMPLE_MAX_BYTES = 1 << 20


class PoolRegistry(Protocol):
    """What the pool publishes and reads in the shared registry
    (:class:`~warmstart.workers.registry.WorkerRegistry` in Redis;
    :class:`~warmstart.workers.stub.StubRegistry` in memory)."""

    def put_model(self, worker: str, state: dict[str, Any]) -> None: ...

    def remove_model(self, worker: str, model: str) -> None: ...

    def record_transition(self, model: str, source: str, target: str, seconds: float) -> None: ...

    def hot_workers(self, model: str) -> list[str]: ...

    def queued_requests(self, model: str) -> int: ...

    def claim_prewarm(self, model: str, ttl_s: float) -> str | None: ...


class QueueGate(Protocol):
    """Starts and stops this worker's consumption of a model's inference queue, and asks the
    cluster for a lazy pre-warm of a model that nobody serves."""

    def open(self, model: str) -> None: ...

    def close(self, model: str) -> None: ...

    def request_prewarm(self, model: str, claim: str | None = None) -> None: ...


@dataclass
class Slot:
    """One model on this worker. Every field is guarded by ``lock`` (see the module's rule)."""

    model: str
    tier: Tier = Tier.REMOTE
    manifest: Manifest | None = None
    local: LocalSnapshot | None = None
    host_module: torch.nn.Module | None = None
    device_module: torch.nn.Module | None = None
    golden: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
    #: Bytes the restored module really holds (parameters and every buffer), once restored.
    held_bytes: int = 0
    health: str = "unknown"  # unknown | ok | failing
    last_error: str | None = None
    #: The typed error that made the model fail; re-raised (with a retry hint) to requests
    #: that reach it within its backoff.
    failure: WarmstartError | None = None
    failures: int = 0
    retry_at_s: float = 0.0
    consuming: bool = False
    last_used_s: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    #: Set while a demotion waits for the leases to come back: no new lease is handed out.
    draining: bool = False
    #: Chosen as a victim under the budget lock; the chooser demotes it next.
    evicting: bool = False
    #: Removed from the pool at REMOTE; the model's current slot is another object.
    retired: bool = False
    #: Recent real requests' inputs (each at most SAMPLE_MAX_BYTES): warm-up inputs, and what a
    #: new version is replayed on beside the serving one before it takes traffic (shadow).
    samples: deque[dict[str, torch.Tensor]] = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))
    warmup: WarmupResult | None = None
    #: A model published with ``compile``: what its last compile step did (workers/compiling.py).
    compile_report: dict[str, Any] | None = None
    hot_at: float | None = None  # wall-clock time the model last became HOT
    #: Made HOT by a lazy warm-up for waiting requests (the beat then holds it at least its
    #: policy's first-gap hold), rather than by a planned pre-warm.
    warmed_by_request: bool = False
    gate_opened_at: float | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    @property
    def size_bytes(self) -> int:
        """Bytes the model counts against budgets: its weights, or what its restored module
        holds when that is more (buffers its architecture's kwargs create)."""
        return max(self.manifest.weights.size_bytes if self.manifest else 0, self.held_bytes)

    @property
    def version(self) -> str | None:
        return self.manifest.version if self.manifest else None

    def state(self) -> dict[str, Any]:
        """What the registry and ``warmstart status`` show of the model (JSON-ready)."""
        warm = self.warmup
        return {
            "model": self.model,
            "version": self.version,
            "tier": self.tier.name,
            "health": self.health,
            "last_error": self.last_error,
            "consuming": self.consuming,
            "size_bytes": self.size_bytes,
            "cold_latency_ms": warm.cold_latency_s * 1000 if warm else None,
            "settled_latency_ms": warm.settled_latency_s * 1000 if warm else None,
            "warmup_runs": warm.runs if warm else None,
            "hot_at": self.hot_at,
            "warmed_by_request": self.warmed_by_request,
            "gate_opened_at": self.gate_opened_at,
            "compile": self.compile_report,
            "updated_at": time.time(),
        }

    def need(self, *parts: str) -> None:
        """Raise unless the named parts (``manifest``, ``local``, ``host_module``,
        ``device_module``, ``golden``) are held: a typed error, never an ``assert``.

        Raises:
            ModelStateError: one is missing (another task moved the model meanwhile).
        """
        missing = [p for p in parts if getattr(self, p) is None]
        if missing:
            raise ModelStateError(
                f"model {self.model!r} is at {self.tier.name} without its {', '.join(missing)}: it "
                "was demoted or reloaded meanwhile; retry"
            )


@dataclass(frozen=True)
class Lease:
    """What a request runs with: the module and manifest it took under the slot's lock."""

    slot: Slot
    module: torch.nn.Module
    manifest: Manifest
