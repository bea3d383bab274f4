"""The model pool of one worker: models held at warmth tiers, within byte budgets.

Each model has a :class:`Slot` whose tier moves one step at a time, every step timed and
published to Redis (the scheduler's cost model reads those times). Promotion to HOT runs the
JIT warm-up and the golden health check, and only then opens the model's inference queue
(the gate); a failed check closes it at once and retries with backoff.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from warmstart.infra.errors import (
    HealthCheckError,
    ModelStateError,
    SnapshotNotFoundError,
    UnknownModelError,
)
from warmstart.infra.settings import Settings
from warmstart.snapshot.cache import LocalSnapshot, SnapshotCache
from warmstart.snapshot.catalog import read_manifest, resolve_version
from warmstart.snapshot.golden import load_golden
from warmstart.snapshot.manifest import Manifest
from warmstart.snapshot.names import validate_name
from warmstart.snapshot.restore import restore_model
from warmstart.snapshot.stores.base import SnapshotStore
from warmstart.workers.tiers import Resident, Tier, choose_demotions, steps_between
from warmstart.workers.warmup import HealthResult, WarmupResult, health_check, run_model, warm_up
from warmstart.workers.wire import check_finite, decode_inputs, encode_tensors

log = logging.getLogger(__name__)

#: Retry a failing model after 1, 2, 4, … seconds, at most this many.
MAX_BACKOFF_S = 60.0


class PoolRegistry(Protocol):
    """What the pool publishes and reads in the shared registry
    (:class:`~warmstart.workers.registry.WorkerRegistry` in Redis;
    :class:`~warmstart.workers.stub.StubRegistry` in memory)."""

    def put_model(self, worker: str, state: dict[str, Any]) -> None: ...

    def remove_model(self, worker: str, model: str) -> None: ...

    def record_transition(self, model: str, source: str, target: str, seconds: float) -> None: ...

    def hot_workers(self, model: str) -> list[str]: ...

    def queued_requests(self, model: str) -> int: ...

    def claim_prewarm(self, model: str, ttl_s: float) -> bool: ...


class QueueGate(Protocol):
    """Starts and stops this worker's consumption of a model's inference queue, and asks the
    cluster for a lazy pre-warm of a model that nobody serves."""

    def open(self, model: str) -> None: ...

    def close(self, model: str) -> None: ...

    def request_prewarm(self, model: str) -> None: ...


@dataclass
class Slot:
    """One model on this worker."""

    model: str
    tier: Tier = Tier.REMOTE
    manifest: Manifest | None = None
    local: LocalSnapshot | None = None
    host_module: torch.nn.Module | None = None
    device_module: torch.nn.Module | None = None
    golden: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
    health: str = "unknown"  # unknown | ok | failing
    last_error: str | None = None
    failures: int = 0
    retry_at_s: float = 0.0
    consuming: bool = False
    last_used_s: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    samples: deque[dict[str, torch.Tensor]] = field(default_factory=lambda: deque(maxlen=4))
    warmup: WarmupResult | None = None
    hot_at: float | None = None  # wall-clock time the model last became HOT
    gate_opened_at: float | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def size_bytes(self) -> int:
        return self.manifest.weights.size_bytes if self.manifest else 0

    @property
    def version(self) -> str | None:
        return self.manifest.version if self.manifest else None

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


class ModelPool:
    """All models of one worker process. Thread-safe: tasks run on a thread pool."""

    def __init__(
        self,
        settings: Settings,
        worker: str,
        store: SnapshotStore,
        cache: SnapshotCache,
        registry: PoolRegistry,
        gate: QueueGate,
        device: torch.device,
    ) -> None:
        self.settings = settings
        self.worker = worker
        self.store = store
        self.cache = cache
        self.registry = registry
        self.gate = gate
        self.device = device
        self.slots: dict[str, Slot] = {}
        self._slots_lock = threading.Lock()
        # One budget decision at a time: choosing victims and demoting them must not interleave.
        self._budget_lock = threading.RLock()

    # --- slots ----------------------------------------------------------------------------

    def slot(self, model: str) -> Slot:
        validate_name(model)
        with self._slots_lock:
            if model not in self.slots:
                self.slots[model] = Slot(model)
            return self.slots[model]

    def residents(self, pinned: set[str] = frozenset()) -> list[Resident]:  # type: ignore[assignment]
        eager = set(self.settings.eager_models) if self.settings.profile == "prod" else set()
        return [
            Resident(s.model, s.tier, s.size_bytes, s.last_used_s, s.model in pinned or s.in_flight > 0, s.model in eager)
            for s in list(self.slots.values())
            if s.tier > Tier.REMOTE
        ]

    # --- promotion ------------------------------------------------------------------------

    def ensure(
        self, model: str, target: Tier | str = Tier.HOT, version: str | None = None, *, urgent: bool = False
    ) -> Slot:
        """Raise (or lower) ``model`` to ``target``, one timed step at a time.

        Args:
            model: the model name.
            target: the tier to reach.
            version: a version or alias to load; default: the ``live`` alias (or what is held).
            urgent: requests are waiting (a lazy warm-up): skip the warm-up runs and let the
                waiting requests warm the model, instead of making them wait for latency to
                settle. The health check (itself one run) gates the model all the same.

        Raises:
            UnknownModelError: the model or version is not published.
            BudgetError: it does not fit even after demoting the least recently used.
            HealthCheckError: it reached DEVICE but failed its golden check (it stays gated).
            SnapshotError: fetching or restoring failed (typed by the snapshot layer).
        """
        target = Tier.parse(target)
        slot = self.slot(model)
        with slot.lock:
            if version is not None and slot.manifest is not None and version not in (slot.version, "live"):
                self.demote(model, Tier.REMOTE)  # another version: start from scratch
            if target < slot.tier:
                self.demote(model, target)
                return slot
            try:
                for step in steps_between(slot.tier, target):
                    self._step_up(slot, step, version, urgent)
            except UnknownModelError:
                with self._slots_lock:  # keep no trace of names that are not published
                    if slot.tier == Tier.REMOTE:
                        self.slots.pop(model, None)
                raise
            slot.last_used_s = time.monotonic()
            return slot

    def _step_up(self, slot: Slot, step: Tier, version: str | None, urgent: bool = False) -> None:
        source = slot.tier
        t0 = time.perf_counter()
        if step == Tier.DISK:
            slot.manifest = self._manifest(slot.model, version)
            slot.local = self.cache.fetch(self.store, slot.manifest)
        elif step == Tier.HOST:
            slot.need("local", "manifest")
            if not slot.local.weights_path.exists():  # the cache evicted it since: fetch again
                slot.local = self.cache.fetch(self.store, slot.manifest)
            self._make_room(Tier.HOST, slot)
            slot.host_module = restore_model(
                slot.local.weights_path,
                slot.manifest,
                device="cpu",
                populate=True,
                allowed_architectures=self.settings.allowed_architectures,
            )
            if slot.golden is None:
                slot.golden = load_golden(slot.local.golden_path, slot.manifest.golden)
        elif step == Tier.DEVICE:
            self._make_room(Tier.DEVICE, slot)
            slot.need("host_module")
            if self.device.type == "cpu":
                slot.device_module = slot.host_module  # ready on the CPU: the same memory
            else:
                # Module.to() moves in place, which would take the HOST copy along; restoring
                # again from the (page-cached) mapping keeps HOST intact for a cheap demotion.
                slot.need("local", "manifest")
                slot.device_module = restore_model(
                    slot.local.weights_path,
                    slot.manifest,
                    device=str(self.device),
                    populate=False,
                    allowed_architectures=self.settings.allowed_architectures,
                )
        elif step == Tier.HOT:
            self._warm_and_check(slot, max_runs=0 if urgent else self.settings.warmup_max_runs)
        slot.tier = step
        elapsed = time.perf_counter() - t0
        self.registry.record_transition(slot.model, source.name, step.name, elapsed)
        if step == Tier.HOT:
            slot.hot_at = time.time()
            self._open_gate(slot)
        self.publish(slot)

    def _manifest(self, model: str, version: str | None) -> Manifest:
        try:
            resolved = resolve_version(self.store, model, version or "live")
            return read_manifest(self.store, model, resolved)
        except SnapshotNotFoundError as e:
            raise UnknownModelError(f"model {model!r} (version {version or 'live'}) is not published: {e}") from e

    def _make_room(self, level: Tier, slot: Slot) -> None:
        budget = self.settings.device_budget_bytes if level == Tier.DEVICE else self.settings.host_budget_bytes
        with self._budget_lock:
            busy: set[str] = set()
            while True:
                victims = choose_demotions(self.residents({slot.model} | busy), level, slot.size_bytes, budget)
                for victim in victims:
                    victim_slot = self.slots.get(victim.model)
                    if victim_slot is None:
                        continue
                    # Never wait for another model's lock while holding the budget lock: its
                    # holder may be waiting for the budget lock (a deadlock). Skip it instead.
                    if not victim_slot.lock.acquire(blocking=False):
                        busy.add(victim.model)
                        break
                    try:
                        log.info("demoting %s below %s to make room for %s", victim.model, level.name, slot.model)
                        self.demote(victim.model, Tier(level - 1))
                    finally:
                        victim_slot.lock.release()
                else:
                    return

    def _warm_and_check(self, slot: Slot, max_runs: int) -> None:
        slot.need("device_module", "golden", "manifest")
        golden_in, _ = slot.golden
        if max_runs > 0:
            inputs = [self._to_device(golden_in)] + [self._to_device(s) for s in slot.samples]
            slot.warmup = warm_up(slot.device_module, inputs, max_runs=max_runs, max_s=self.settings.warmup_max_s)
        result = self._check(slot)
        if max_runs == 0:  # the health check's own run was the only (cold) one
            slot.warmup = WarmupResult(0, result.latency_s, result.latency_s, False, result.latency_s)
        if not result.ok:
            raise HealthCheckError(f"model {slot.model!r} failed its golden check: {result.reason}")

    def _check(self, slot: Slot) -> HealthResult:
        slot.need("device_module", "golden", "manifest")
        golden_in, golden_out = slot.golden
        result = health_check(
            slot.device_module,
            self._to_device(golden_in),
            golden_out,
            rtol=slot.manifest.golden.rtol,
            atol=slot.manifest.golden.atol,
            timeout_s=self.settings.health_timeout_s,
        )
        if result.ok:
            slot.health, slot.last_error, slot.failures = "ok", None, 0
        else:
            self._mark_failing(slot, result.reason)
        return result

    def _mark_failing(self, slot: Slot, reason: str) -> None:
        slot.health, slot.last_error = "failing", reason
        slot.failures += 1
        slot.retry_at_s = time.monotonic() + min(MAX_BACKOFF_S, 2.0 ** (slot.failures - 1))
        if slot.tier == Tier.HOT:
            slot.tier = Tier.DEVICE
        self._close_gate(slot)
        log.warning("model %s failed its health check (%s); gated off", slot.model, reason)
        self.publish(slot)

    def _to_device(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            return dict(tensors)
        return {k: v.to(self.device, non_blocking=True) for k, v in tensors.items()}

    # --- gate -----------------------------------------------------------------------------

    def _open_gate(self, slot: Slot) -> None:
        if not slot.consuming:
            slot.consuming = True
            slot.gate_opened_at = time.time()
            self.gate.open(slot.model)

    def _close_gate(self, slot: Slot) -> None:
        if slot.consuming:
            slot.consuming = False
            self.gate.close(slot.model)
            self.publish(slot)
            self.rescue_queue(slot.model)

    def rescue_queue(self, model: str) -> bool:
        """When no worker serves ``model`` any more but requests wait in its queue, ask for a
        lazy pre-warm (which any worker with room takes), so that no request is stranded.

        Returns:
            True when a pre-warm was sent.
        """
        if self.registry.hot_workers(model) or not self.registry.queued_requests(model):
            return False
        if not self.registry.claim_prewarm(model, self.settings.prewarm_claim_s):
            return False
        self.gate.request_prewarm(model)
        return True

    # --- demotion -------------------------------------------------------------------------

    def demote(self, model: str, target: Tier | str) -> Slot:
        """Lower ``model`` to ``target`` (HOT → DEVICE closes its queue first)."""
        target = Tier.parse(target)
        slot = self.slot(model)
        with slot.lock:
            for step in steps_between(slot.tier, target):
                source = slot.tier
                t0 = time.perf_counter()
                if source == Tier.HOT:
                    self._close_gate(slot)
                elif source == Tier.DEVICE:
                    slot.device_module = None
                elif source == Tier.HOST:
                    slot.host_module = None
                    gc.collect()  # drop the mapping now, not at some later collection
                elif source == Tier.DISK and slot.manifest is not None:
                    self.cache.evict(slot.model, slot.manifest.version)
                    slot.local = None
                slot.tier = step
                self.registry.record_transition(model, source.name, step.name, time.perf_counter() - t0)
            if slot.tier == Tier.REMOTE:
                slot.manifest, slot.golden = None, None
                with self._slots_lock:
                    self.slots.pop(model, None)
                self.registry.remove_model(self.worker, model)
            else:
                self.publish(slot)
            return slot

    # --- serving --------------------------------------------------------------------------

    def infer(self, model: str, inputs_payload: object) -> dict[str, Any]:
        """Answer one request: decode and check inputs, run, check outputs, encode.

        A request that reaches a worker where the model is not HOT (a message prefetched just
        before its queue was closed) is answered after a lazy promotion, never dropped.

        Raises:
            InvalidInputError, PayloadTooLargeError: the inputs are wrong for this model.
            NonFiniteOutputError: the model produced NaN/inf (a health check follows).
            UnknownModelError: the model is not published.
        """
        slot = self.slot(model)
        with slot.lock:
            if slot.tier < Tier.DEVICE or slot.health == "failing":
                self.ensure(model, Tier.HOT, urgent=True)
            slot.in_flight += 1
        try:
            slot.need("manifest", "device_module")
            inputs = decode_inputs(inputs_payload, slot.manifest.inputs, max_bytes=self.settings.max_payload_bytes)
            started = time.time()
            t0 = time.perf_counter()
            outputs = run_model(slot.device_module, self._to_device(inputs))
            forward_s = time.perf_counter() - t0
            try:
                check_finite(outputs, model)
            except Exception:
                threading.Thread(target=self.check_health, args=(model,), daemon=True).start()
                raise
            slot.samples.append(inputs)
            return {
                "model": model,
                "version": slot.version,
                "worker": self.worker,
                "outputs": encode_tensors(outputs),
                "started_at": started,
                "forward_ms": forward_s * 1000,
            }
        finally:
            slot.in_flight -= 1
            slot.last_used_s = time.monotonic()

    def keep_warm(self, model: str) -> dict[str, Any]:
        """A tiny inference that proves the model still answers and refreshes its idle clock."""
        slot = self.slot(model)
        if slot.tier < Tier.DEVICE or slot.golden is None or slot.device_module is None:
            return {"model": model, "tier": slot.tier.name, "answered": False}
        t0 = time.perf_counter()
        run_model(slot.device_module, self._to_device(slot.golden[0]))
        slot.last_used_s = time.monotonic()
        return {"model": model, "tier": slot.tier.name, "answered": True, "latency_ms": (time.perf_counter() - t0) * 1000}

    def check_health(self, model: str) -> dict[str, Any]:
        """Run the golden check now. A failure gates the model off at once; a failing model
        whose backoff has passed is re-warmed and re-checked, and re-joins when it passes."""
        slot = self.slot(model)
        with slot.lock:
            if slot.tier < Tier.DEVICE or slot.device_module is None:
                return {"model": model, "tier": slot.tier.name, "checked": False}
            if slot.health == "failing":
                if time.monotonic() < slot.retry_at_s:
                    return {"model": model, "tier": slot.tier.name, "checked": False, "health": "failing"}
                try:
                    self.ensure(model, Tier.HOT)  # warm-up + check; opens the gate on success
                    ok, reason = True, "ok"
                except HealthCheckError as e:
                    ok, reason = False, str(e)
            else:
                result = self._check(slot)
                ok, reason = result.ok, result.reason
            self.publish(slot)
            return {"model": model, "tier": slot.tier.name, "checked": True, "ok": ok, "reason": reason}

    def health_tick(self) -> None:
        """Check every model that is HOT, or failing and due for a retry."""
        for model in list(self.slots):
            slot = self.slots.get(model)
            if slot is not None and (slot.tier == Tier.HOT or slot.health == "failing"):
                try:
                    self.check_health(model)
                except Exception:  # one model's failure must not stop the others' checks
                    log.exception("health check of %s raised", model)

    # --- reporting ------------------------------------------------------------------------

    def model_state(self, slot: Slot) -> dict[str, Any]:
        warm = slot.warmup
        return {
            "model": slot.model,
            "version": slot.version,
            "tier": slot.tier.name,
            "health": slot.health,
            "last_error": slot.last_error,
            "consuming": slot.consuming,
            "size_bytes": slot.size_bytes,
            "cold_latency_ms": warm.cold_latency_s * 1000 if warm else None,
            "settled_latency_ms": warm.settled_latency_s * 1000 if warm else None,
            "warmup_runs": warm.runs if warm else None,
            "hot_at": slot.hot_at,
            "gate_opened_at": slot.gate_opened_at,
            "updated_at": time.time(),
        }

    def publish(self, slot: Slot) -> None:
        self.registry.put_model(self.worker, self.model_state(slot))

    def usage(self) -> dict[str, int]:
        residents = self.residents()
        return {
            "host_bytes": sum(r.size_bytes for r in residents if r.tier >= Tier.HOST),
            "device_bytes": sum(r.size_bytes for r in residents if r.tier >= Tier.DEVICE),
            "cache_bytes": self.cache.usage_bytes(),
        }

    def status(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "device": str(self.device),
            "budgets": {
                "cache_bytes": self.settings.cache_budget_bytes,
                "host_bytes": self.settings.host_budget_bytes,
                "device_bytes": self.settings.device_budget_bytes,
            },
            "usage": self.usage(),
            "models": {m: self.model_state(s) for m, s in list(self.slots.items())},
        }
