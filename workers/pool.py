"""The model pool of one worker: models held at warmth tiers, within byte budgets.

Each model has a :class:`Slot` whose tier moves one step at a time, every step timed and
published to the registry (the scheduler's cost model reads those times). Promotion to HOT
runs the JIT warm-up and the golden health check, and only then opens the model's inference
queue (the gate); a failed check closes it at once and retries with backoff.

The one rule for shared state
-----------------------------
Task threads (requests, pre-warms, demotions), the health loop and the eager warm-up share
the pool. Four kinds of lock guard it, and nothing else does:

1. ``_slots_lock`` guards the ``slots`` dict (adding and removing entries) and nothing more; it
   is held only for the dict operation, never while calling out.
2. ``slot.lock`` (one per model) guards every field of that slot. It is held for a whole
   transition of the model (fetch, restore, warm-up, demotion), for a health check (bounded:
   the check's forward has a deadline, see :func:`~warmstart.workers.warmup.health_check`),
   and briefly by a request to *lease* the model (take its module, ``in_flight += 1``) and to
   return it. The forward of a request runs without it, on the module it leased; a demotion
   closes the gate, then waits (on ``slot.changed``) for the leases to come back before it
   drops a module. A slot removed at REMOTE is *retired*: whoever finds a retired slot after
   taking its lock starts again with the model's current slot.
3. ``_budget_lock`` (the lock of :class:`~warmstart.workers.budget.Reservations`) guards the
   reservations and the choice of victims: arithmetic only. It
   is never held while waiting for a slot's lock, doing I/O, restoring, or calling Redis or
   Celery.
4. The lock of :class:`~warmstart.workers.versions.VersionStager` guards its dict of staged
   versions, its set of models being staged, and a canary's share, turn count and per-version
   counters (dict, set and counter operations only). A canary request leases the staged
   slot under that slot's own lock, after the stager's lock is released. It is taken
   alone, or inside a slot's lock (a switch), never the other way round, and nothing is
   called while it is held. ``residents()`` takes it (inside ``_budget_lock``) to pin the
   models being staged: it is a leaf lock, held for a set copy.

Order: ``slot.lock`` may be held while taking ``_budget_lock`` (a promotion reserving bytes),
never the reverse. A thread holding its own slot's lock takes a victim's lock only without
blocking (a busy victim is skipped and another chosen), so no two promotions can wait for
each other. A promotion that requests wait for (a request's own load, a lazy pre-warm) or a
version being staged, finding its room held by models in use (leased, moving, being
evicted), waits for it, for at most ``WARMSTART_ROOM_WAIT_S``, holding its own slot's lock
and no other lock, and no reservation of the tier it waits for (a version being staged keeps
its HOST reservation while it waits for DEVICE room): it polls, so it never waits on a lock
the busy models' holders need, and its own model, being below the tier it reserves, holds
none of the room it waits for. Every wait ends at its deadline, so a wait that another wait
holds up ends too. Room pinned for longer (a staged version, a drain) is not waited for.

Batching (:mod:`warmstart.workers.batching`) adds no lock on pool state: a request waits in a
batch holding only its lease; the batcher's own locks guard its open batches and serialise
one module's batched forwards, and no pool lock is ever taken while one is held.

What counts against a budget: a model's bytes count against the budget of every tier at or
below its own (:mod:`warmstart.workers.tiers`), and a promotion counts against the budget of
the tier it is moving to *from the moment it is decided* (a reservation taken under
``_budget_lock`` before anything is loaded, :mod:`warmstart.workers.budget`), until the step has finished or failed. Victims
are chosen among models that are not moving, not leased and not being evicted, and are
demoted before the promoted model loads anything. A staged version counts against the HOST
and DEVICE budgets (a reservation named ``<model>@<version>``) from the moment its staging is
decided until it is switched to (then the slot counts it) or discarded.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from warmstart.infra.errors import (
    BudgetError,
    HealthCheckError,
    ModelExecutionError,
    SnapshotNotFoundError,
    UnknownModelError,
    WarmstartError,
)
from warmstart.infra.settings import Settings
from warmstart.infra.tiers import Tier, policy_tier
from warmstart.snapshot.cache import SnapshotCache
from warmstart.snapshot.catalog import read_manifest, resolve_version
from warmstart.snapshot.golden import load_golden
from warmstart.snapshot.manifest import Manifest
from warmstart.snapshot.names import validate_name
from warmstart.snapshot.restore import module_nbytes, restore_model
from warmstart.snapshot.stores.base import SnapshotStore
from warmstart.workers.batching import Batcher, batching_of
from warmstart.workers.budget import Reservations
from warmstart.workers.compiling import compile_model, is_compiled
from warmstart.workers.health import HealthKeeper
from warmstart.workers.slots import MAX_BACKOFF_S, SAMPLE_MAX_BYTES, Lease, PoolRegistry, QueueGate, Slot
from warmstart.workers.tiers import Resident, steps_between, used_bytes
from warmstart.workers.versions import VersionStager
from warmstart.workers.warmup import HealthResult, WarmupResult, health_check, run_model, warm_up
from warmstart.workers.wire import check_finite, decode_inputs, encode_tensors

log = logging.getLogger(__name__)

#: How often a promotion waiting for room held by busy models tries again.
ROOM_POLL_S = 0.02

class ModelPool:
    """All models of one worker process. Thread-safe: see the module's rule for shared state."""

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
        #: Bytes of promotions in progress; its lock is the budget lock of rule 3.
        self._reservations = Reservations()
        self.health = HealthKeeper(self)
        #: Concurrent requests of one model run as one forward; its own lock guards only its
        #: open batches (list operations), is never held with another and never while waiting.
        self.batcher = Batcher()
        #: A second version of a model, staged beside the serving one (workers/versions.py).
        self.versions = VersionStager(self)

    # --- slots ----------------------------------------------------------------------------

    def slot(self, model: str) -> Slot:
        """The model's current slot (created at REMOTE when it has none)."""
        validate_name(model)
        with self._slots_lock:
            if model not in self.slots:
                self.slots[model] = Slot(model)
            return self.slots[model]

    @contextmanager
    def _locked(self, model: str) -> Iterator[Slot]:
        """The model's current slot, its lock held; never a slot retired meanwhile."""
        while True:
            slot = self.slot(model)
            with slot.lock:
                if slot.retired:
                    continue
                yield slot
                return

    def _retire(self, slot: Slot) -> None:
        slot.retired = True
        with self._slots_lock:
            if self.slots.get(slot.model) is slot:
                del self.slots[slot.model]
        slot.changed.notify_all()

    def residents(self, pinned: frozenset[str] = frozenset()) -> list[Resident]:
        """What the eviction rule needs to know of every model held above REMOTE."""
        eager = set(self.settings.eager_models) if self.settings.profile == "prod" else set()
        moving, staged = self._reservations.moving(), self.versions.pinned()
        residents = []
        for s in list(self.slots.values()):
            if s.tier <= Tier.REMOTE:
                continue
            in_use = s.model in pinned or s.model in moving or s.in_flight > 0 or s.evicting
            held = s.model in staged or s.draining  # pinned for as long as a rollout or drain
            residents.append(Resident(s.model, s.tier, s.size_bytes, s.last_used_s, in_use or held,
                                      s.model in eager, busy=in_use and not held))
        return residents

    # --- budgets --------------------------------------------------------------------------

    def _budget(self, level: Tier) -> int:
        return self.settings.device_budget_bytes if level >= Tier.DEVICE else self.settings.host_budget_bytes

    def _reserve(self, slot: Slot, level: Tier, size_bytes: int, *, wait: bool = False) -> None:
        """Count ``size_bytes`` of ``slot`` against ``level``'s budget from now on, demoting the
        least recently used idle models below ``level`` first when they are in the way.

        Called with ``slot.lock`` held. The reservation stands until :meth:`_unreserve`.
        With ``wait`` (requests are waiting for this promotion, or a version is being
        staged), when the room is held by models in use or by other promotions
        (``BudgetError.busy``), it waits up to ``WARMSTART_ROOM_WAIT_S`` for them, trying
        again every ``ROOM_POLL_S`` (see the rule for shared state: no other lock is held
        while it waits). Without, it answers at once: the beat's pre-warms are planned again
        next tick, and do not hold a task thread meanwhile.

        Raises:
            BudgetError: it does not fit even with every idle model demoted (at once when the
                model is larger than the budget; after the wait when the room stayed busy).
        """
        skip: set[str] = set()
        waited = False
        wait_s = self.settings.room_wait_s if wait else 0.0
        deadline = time.monotonic() + wait_s
        while True:
            try:
                picked = self._reservations.reserve(
                    slot.model, level, size_bytes, self._budget(level),
                    lambda: self.residents(frozenset(skip)), self._mark_evicting,
                )  # fmt: skip
            except BudgetError as e:
                left = deadline - time.monotonic()
                if not e.busy or left <= 0:
                    if e.busy and wait_s > 0:
                        raise BudgetError(f"{e} (waited {wait_s:g} s for room: WARMSTART_ROOM_WAIT_S)",
                                          busy=True) from e
                    raise
                if not waited:
                    log.info("waiting up to %.1f s for room for %s at %s: %s", left, slot.model, level.name, e)
                    waited = True
                time.sleep(min(ROOM_POLL_S, left))
                skip.clear()  # the models that were busy may be idle now
                continue
            busy = [v.model for v in picked if not self._evict(v, Tier(level - 1))]
            if not busy:
                return
            # A victim was taken meanwhile (leased, or its own transition began): give the
            # reservation back and choose again without it.
            self._unreserve(slot, level)
            skip.update(busy)

    def _mark_evicting(self, models: list[str]) -> list[Slot]:
        picked = [s for s in (self.slots.get(m) for m in models) if s is not None]
        for victim in picked:
            victim.evicting = True
        return picked

    def _unreserve(self, slot: Slot, level: Tier) -> None:
        self._reservations.release(slot.model, level)

    def _evict(self, victim: Slot, target: Tier) -> bool:
        """Demote a victim chosen under the budget lock, if it is still idle. False: busy."""
        try:
            if not victim.lock.acquire(blocking=False):
                return False
            try:
                if victim.retired or victim.in_flight or victim.draining:
                    return victim.retired
                log.info("demoting %s to %s to make room", victim.model, target.name)
                self._demote_locked(victim, target)
                return True
            finally:
                victim.lock.release()
        finally:
            victim.evicting = False

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
                settle. The health check (itself one run) gates the model all the same. When
                the model cannot be made HOT, the waiting requests are answered with the cause
                (see :meth:`_fail`).

        Raises:
            UnknownModelError: the model or version is not published.
            BudgetError: it does not fit even after demoting the least recently used.
            HealthCheckError: it reached DEVICE but failed its golden check (it stays gated).
            SnapshotError: fetching or restoring failed (typed by the snapshot layer).
        """
        target = Tier.parse(target)
        with self._locked(model) as slot:
            if version is not None and slot.manifest is not None and version not in (slot.version, "live"):
                self._demote_locked(slot, Tier.REMOTE)  # another version: start from scratch
            if slot.retired:
                return self.ensure(model, target, version, urgent=urgent)
            self._ensure_locked(slot, target, version, urgent)
            return slot

    def _ensure_locked(self, slot: Slot, target: Tier, version: str | None, urgent: bool) -> None:
        if target < slot.tier:
            self._demote_locked(slot, target)
            return
        if target > slot.tier or slot.health == "failing":
            self._raise_if_backing_off(slot)
        try:
            for step in steps_between(slot.tier, target):
                self._step_up(slot, step, version, urgent)
        except UnknownModelError:
            if slot.tier == Tier.REMOTE:  # keep no trace of names that are not published
                self._retire(slot)
            raise
        except WarmstartError as e:
            if isinstance(e, BudgetError) and e.busy and not urgent:
                raise  # the room is in use: not the model's failure (the beat plans it again)
            self._fail(slot, e, answer_waiting=urgent)
            raise
        except Exception as e:  # a factory or a forward that raised: typed, never raw
            error = ModelExecutionError(f"model {slot.model!r} could not be made {target.name}: {type(e).__name__}: {e}")
            log.exception("making %s %s raised", slot.model, target.name)
            self._fail(slot, error, answer_waiting=urgent)
            raise error from e
        slot.last_used_s = time.monotonic()

    def _step_up(self, slot: Slot, step: Tier, version: str | None, urgent: bool = False) -> None:
        source = slot.tier
        t0 = time.perf_counter()
        if step == Tier.DISK:
            slot.manifest = self._manifest(slot.model, version)
            slot.local = self.cache.fetch(self.store, slot.manifest)
        elif step == Tier.HOST:
            slot.need("local", "manifest")
            self._reserve(slot, Tier.HOST, slot.size_bytes, wait=urgent)
            try:
                if not slot.local.weights_path.exists():  # type: ignore[union-attr]  # evicted since: fetch again
                    slot.local = self.cache.fetch(self.store, slot.manifest)  # type: ignore[arg-type]
                self._restore_host(slot)
                slot.tier = step
            finally:
                self._unreserve(slot, Tier.HOST)
        elif step == Tier.DEVICE:
            slot.need("host_module", "local", "manifest")
            self._reserve(slot, Tier.DEVICE, slot.size_bytes, wait=urgent)
            try:
                if self.device.type == "cpu":
                    slot.device_module = slot.host_module  # ready on the CPU: the same memory
                else:
                    # Module.to() moves in place, which would take the HOST copy along; restoring
                    # again from the (page-cached) mapping keeps HOST intact for a cheap demotion.
                    slot.device_module = restore_model(
                        slot.local.weights_path,  # type: ignore[union-attr]
                        slot.manifest,  # type: ignore[arg-type]
                        device=str(self.device),
                        populate=False,
                        allowed_architectures=self.settings.allowed_architectures,
                    )
                slot.tier = step
            finally:
                self._unreserve(slot, Tier.DEVICE)
        elif step == Tier.HOT:
            self._warm_and_check(slot, max_runs=0 if urgent else self.settings.warmup_max_runs)
        slot.tier = step
        self.registry.record_transition(slot.model, source.name, step.name, time.perf_counter() - t0)
        if step == Tier.HOT:
            slot.hot_at, slot.warmed_by_request = time.time(), urgent
            slot.failure = None
            self._open_gate(slot)
        self.publish(slot)

    def _restore_host(self, slot: Slot) -> None:
        """Restore into host memory, then count what the module really holds: an architecture's
        kwargs can create buffers far larger than the weights, and those count too."""
        module = restore_model(
            slot.local.weights_path,  # type: ignore[union-attr]
            slot.manifest,  # type: ignore[arg-type]
            device="cpu",
            populate=True,
            allowed_architectures=self.settings.allowed_architectures,
        )
        held = module_nbytes(module)
        if held > slot.size_bytes:
            # Count the difference before keeping the module; without room, drop it now.
            try:
                self._reserve(slot, Tier.HOST, held)  # no wait: the module is held meanwhile
            except BudgetError as e:
                del module
                gc.collect()
                raise BudgetError(
                    f"model {slot.model!r} holds {held} bytes once restored (its weights are "
                    f"{slot.size_bytes}; its architecture's kwargs create the rest), which does not "
                    f"fit the HOST budget: {e}",
                    busy=e.busy,
                ) from e
        slot.held_bytes = held
        slot.host_module = module
        if slot.golden is None:
            slot.golden = load_golden(slot.local.golden_path, slot.manifest.golden)  # type: ignore[union-attr]

    def _manifest(self, model: str, version: str | None) -> Manifest:
        try:
            resolved = resolve_version(self.store, model, version or "live")
            return read_manifest(self.store, model, resolved)
        except SnapshotNotFoundError as e:
            raise UnknownModelError(f"model {model!r} (version {version or 'live'}) is not published: {e}") from e

    def _warm_and_check(self, slot: Slot, max_runs: int) -> None:
        slot.need("device_module", "golden", "manifest")
        golden_in, _ = slot.golden  # type: ignore[misc]
        if slot.manifest.compile and not is_compiled(slot.device_module):  # type: ignore[union-attr,arg-type]
            slot.device_module, slot.compile_report = self._compile(slot, golden_in)
        if max_runs > 0:
            inputs = [self._to_device(golden_in)] + [self._to_device(s) for s in slot.samples]
            slot.warmup = warm_up(
                slot.device_module,  # type: ignore[arg-type]
                inputs,
                max_runs=max_runs,
                max_s=self.settings.warmup_max_s,
                run_timeout_s=self.settings.health_timeout_s,
            )
        result = self._check(slot)
        if max_runs == 0:  # the health check's own run was the only (cold) one
            slot.warmup = WarmupResult(0, result.latency_s, result.latency_s, False, result.latency_s)
        if not result.ok:
            raise slot.failure or HealthCheckError(f"model {slot.model!r} failed its golden check: {result.reason}")

    def _compile(self, slot: Slot, golden_in: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The compile step (workers/compiling.py), before the warm-up of a model published with
        ``compile``; its own deadline, as compiling takes far longer than a forward."""
        key = self.settings.signing_key
        return compile_model(
            slot.device_module, slot.manifest, self._to_device(golden_in),  # type: ignore[arg-type]
            cache_dir=self.settings.cache_dir, device=str(self.device), timeout_s=self.settings.compile_timeout_s,
            store=self.store, signing_key=key.get_secret_value().encode() if key is not None else None,
        )  # fmt: skip

    def _check(self, slot: Slot) -> HealthResult:
        slot.need("device_module", "golden", "manifest")
        golden_in, golden_out = slot.golden  # type: ignore[misc]
        result = health_check(
            slot.device_module,  # type: ignore[arg-type]
            self._to_device(golden_in),
            golden_out,
            rtol=slot.manifest.golden.rtol,  # type: ignore[union-attr]
            atol=slot.manifest.golden.atol,  # type: ignore[union-attr]
            timeout_s=self.settings.health_timeout_s,
        )
        if result.ok:
            slot.health, slot.last_error, slot.failures, slot.failure = "ok", None, 0, None
        else:
            self._mark_failing(slot, result.reason, HealthCheckError(f"model {slot.model!r} failed its golden check: {result.reason}"))
        return result

    def _mark_failing(self, slot: Slot, reason: str, error: WarmstartError) -> None:
        slot.health, slot.last_error, slot.failure = "failing", reason, error
        slot.failures += 1
        slot.retry_at_s = time.monotonic() + min(MAX_BACKOFF_S, 2.0 ** (slot.failures - 1))
        if slot.tier == Tier.HOT:
            slot.tier = Tier.DEVICE
        self._close_gate(slot)
        log.warning("model %s is failing (%s); gated off, retry in %.0f s", slot.model, reason,
                    slot.retry_at_s - time.monotonic())  # fmt: skip
        self.publish(slot)

    def _fail(self, slot: Slot, error: WarmstartError, *, answer_waiting: bool) -> None:
        """A promotion failed: record why (``status`` shows it), back off, and when requests
        wait for this model and no worker serves it, consume its queue to answer each of
        them with the cause rather than leave them to time out."""
        if slot.retired:
            return
        if slot.health != "failing" or slot.failure is not error:
            self._mark_failing(slot, str(error), error)
        if answer_waiting and not slot.consuming and not self._served_elsewhere(slot.model):
            log.warning("answering requests for %s with its error until it recovers", slot.model)
            self._open_gate(slot)
            self.publish(slot)

    def _raise_if_backing_off(self, slot: Slot) -> None:
        """A model that failed is tried again only once its backoff has passed: until then,
        whoever wants it (a request, a pre-warm) gets the cause, not another attempt."""
        if slot.health == "failing" and slot.failure is not None and time.monotonic() < slot.retry_at_s:
            wait_s = slot.retry_at_s - time.monotonic()
            raise type(slot.failure)(
                f"{slot.failure} (model {slot.model!r} is failing on worker {self.worker}; it is "
                f"retried in {wait_s:.0f} s)"
            )

    def _served_elsewhere(self, model: str) -> bool:
        try:
            return any(w != self.worker for w in self.registry.hot_workers(model))
        except WarmstartError:
            return False

    def _to_device(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            return dict(tensors)
        return {k: v.to(self.device, non_blocking=True) for k, v in tensors.items()}

    # --- gate -----------------------------------------------------------------------------

    def _open_gate(self, slot: Slot) -> None:
        """Start consuming the model's queue. A broker that cannot be reached leaves the gate
        closed (the model stays HOT, not serving) and the health tick opens it again later:
        the model is not at fault."""
        if slot.consuming:
            return
        try:
            self.gate.open(slot.model)
        except WarmstartError as e:
            log.warning("could not open the queue of %s (%s); the health tick retries", slot.model, e)
            return
        slot.consuming = True
        slot.gate_opened_at = time.time()

    def _close_gate(self, slot: Slot) -> None:
        if slot.consuming:
            slot.consuming = False
            try:
                self.gate.close(slot.model)
            except WarmstartError as e:  # a request that still arrives is served (re-promoting)
                log.warning("could not close the queue of %s: %s", slot.model, e)
            self.publish(slot)
            self.rescue_queue(slot.model)

    def reopen_gate(self, slot: Slot) -> None:
        """Open the gate of a HOT model whose opening failed (called with its lock held)."""
        if slot.tier == Tier.HOT and not slot.consuming:
            self._open_gate(slot)
            self.publish(slot)

    def rescue_queue(self, model: str) -> bool:
        """When no worker serves ``model`` any more but requests wait in its queue, ask for a
        lazy pre-warm (which any worker with room takes), so that no request is stranded.

        Returns:
            True when a pre-warm was sent.
        """
        if self.registry.hot_workers(model) or not self.registry.queued_requests(model):
            return False
        claim = self.registry.claim_prewarm(model, self.settings.prewarm_claim_s)
        if not claim:
            return False
        self.gate.request_prewarm(model, claim)
        return True

    # --- demotion -------------------------------------------------------------------------

    def demote(self, model: str, target: Tier | str, seen: Tier | str | None = None) -> Slot:
        """Lower ``model`` to ``target`` (HOT → DEVICE stops consuming its queue first, and
        in-flight requests finish before a module is dropped).

        ``seen``: the tier the sender saw the model at when it decided (the beat's view,
        named as a policy tier). A model that has become warmer since (a request made it
        HOT while the decision waited in the queue) is left as it is: the decision was
        about a model that no longer exists, and the next plan sees the new one.
        """
        target = Tier.parse(target)
        seen_tier = None if seen is None else Tier.parse(seen)
        with self._locked(model) as slot:
            if seen_tier is not None and policy_tier(slot.tier) > seen_tier:
                log.info("not demoting %s to %s: it is %s now, warmer than the %s it was decided on",
                         model, target.name, slot.tier.name, seen_tier.name)  # fmt: skip
                return slot
            self._demote_locked(slot, target)
            return slot

    def _demote_locked(self, slot: Slot, target: Tier) -> None:
        if target >= slot.tier and not (target == Tier.REMOTE and slot.tier == Tier.REMOTE):
            return
        if slot.consuming:
            self._close_gate(slot)  # no new request reaches this worker for the model
        self._drain(slot)
        for step in steps_between(slot.tier, target):
            source = slot.tier
            t0 = time.perf_counter()
            if source == Tier.DEVICE:
                slot.device_module = None
            elif source == Tier.HOST:
                slot.host_module, slot.held_bytes = None, 0
                gc.collect()  # drop the mapping now, not at some later collection
            elif source == Tier.DISK and slot.manifest is not None:
                self.cache.evict(slot.model, slot.manifest.version)
                slot.local = None
            slot.tier = step
            self.registry.record_transition(slot.model, source.name, step.name, time.perf_counter() - t0)
        if slot.tier == Tier.REMOTE:
            slot.manifest, slot.golden = None, None
            self._retire(slot)
            self.registry.remove_model(self.worker, slot.model)
        else:
            self.publish(slot)

    def _drain(self, slot: Slot) -> None:
        """Wait (releasing the lock) until no request holds a lease on the slot's module, at
        most the inference timeout: a forward that hangs longer keeps its module alive by
        itself, and the budget no longer counts it."""
        if not slot.in_flight:
            return
        slot.draining = True
        try:
            deadline = time.monotonic() + self.settings.inference_timeout_s
            while slot.in_flight and (left := deadline - time.monotonic()) > 0:
                slot.changed.wait(left)
            if slot.in_flight:
                log.warning("demoting %s with %d request(s) still running past %.0f s", slot.model,
                            slot.in_flight, self.settings.inference_timeout_s)  # fmt: skip
        finally:
            slot.draining = False
            slot.changed.notify_all()

    # --- serving --------------------------------------------------------------------------

    def _lease(self, model: str) -> Lease:
        """Take the model's runnable module for one request, promoting it first when needed.

        A request that reaches a worker where the model is not HOT (a message prefetched just
        before its queue was closed, or the lazy path) promotes it, unless the model failed
        and its backoff has not passed: then the request is answered with the cause.
        """
        with self._locked(model) as slot:
            while slot.draining:
                slot.changed.wait()
            if slot.retired:
                return self._lease(model)
            if slot.tier < Tier.DEVICE or slot.health == "failing":
                self._ensure_locked(slot, Tier.HOT, None, urgent=True)
            slot.need("manifest", "device_module")
            slot.in_flight += 1
            return Lease(slot, slot.device_module, slot.manifest)  # type: ignore[arg-type]

    def _give_back(self, lease: Lease) -> None:
        slot = lease.slot
        with slot.lock:
            slot.in_flight -= 1
            slot.last_used_s = time.monotonic()
            slot.changed.notify_all()

    def infer(self, model: str, inputs_payload: object) -> dict[str, Any]:
        """Answer one request: decode and check inputs, run, check outputs, encode.

        Raises:
            InvalidInputError, PayloadTooLargeError: the inputs are wrong for this model.
            ModelExecutionError: the model's forward raised on these inputs.
            NonFiniteOutputError: the model produced NaN/inf (a health check follows).
            UnknownModelError: the model is not published.
            WarmstartError: the model cannot be made HOT here (the cause's own type).
        """
        lease = self._lease(model)
        canary = self.versions.pick_canary(model)  # a rollout's canary share (workers/versions.py)
        if canary is not None:
            self._give_back(lease)
            lease = canary
        outcome, t0 = "invalid", time.perf_counter()  # a bad request counts against no version
        try:
            inputs = decode_inputs(inputs_payload, lease.manifest.inputs, max_bytes=self.settings.max_payload_bytes)
            outcome = "error"
            started = time.time()
            t0 = time.perf_counter()
            try:
                outputs, batch_size = self._forward(lease, self._to_device(inputs))
            except WarmstartError:
                raise
            except Exception as e:  # the model's own error on this request: an answer, not a crash
                raise ModelExecutionError(
                    f"model {model!r} raised {type(e).__name__} on this request: {e}. Check the inputs "
                    "against the model's input spec (`warmstart inspect`)"
                ) from e
            forward_s = time.perf_counter() - t0
            try:
                check_finite(outputs, model)
            except WarmstartError:
                outcome = "non_finite"
                if canary is None:  # the serving version: check it; a canary is judged by the beat
                    threading.Thread(target=self.check_health, args=(model,), daemon=True).start()
                raise
            outcome = "ok"
            if sum(t.nbytes for t in inputs.values()) <= SAMPLE_MAX_BYTES:
                lease.slot.samples.append(inputs)
            return {
                "model": model,
                "version": lease.manifest.version,
                "worker": self.worker,
                "outputs": encode_tensors(outputs),
                "started_at": started,
                "forward_ms": forward_s * 1000,
                "batch_size": batch_size,
            }
        finally:
            if outcome != "invalid":
                self.versions.record(model, lease.manifest.version, outcome, time.perf_counter() - t0)
            self._give_back(lease)

    def _forward(self, lease: Lease, inputs: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        """One request's forward, batched with concurrent ones (:mod:`warmstart.workers.batching`)
        when the manifest or the settings ask for it. Holds only the lease, no lock."""
        max_batch, max_wait_ms = batching_of(lease.manifest, self.settings)
        return self.batcher.run(
            lease.module, inputs, lease.manifest.inputs, lambda batch: run_model(lease.module, batch),
            max_batch=max_batch, max_wait_s=max_wait_ms / 1000, timeout_s=self.settings.inference_timeout_s,
        )  # fmt: skip

    def keep_warm(self, model: str) -> dict[str, Any]:
        """A tiny inference that proves the model still answers and refreshes its idle clock.
        A model below DEVICE is not promoted for it."""
        with self._locked(model) as slot:
            if slot.tier < Tier.DEVICE or slot.golden is None or slot.device_module is None or slot.draining:
                tier = slot.tier
                if slot.tier == Tier.REMOTE:
                    self._retire(slot)
                return {"model": model, "tier": tier.name, "answered": False}
            slot.in_flight += 1
            lease = Lease(slot, slot.device_module, slot.manifest)  # type: ignore[arg-type]
            golden_in = slot.golden[0]
        try:
            t0 = time.perf_counter()
            run_model(lease.module, self._to_device(golden_in))
            latency_ms = (time.perf_counter() - t0) * 1000
        except Exception as e:
            raise ModelExecutionError(f"model {model!r} raised {type(e).__name__} on its keep-warm run: {e}") from e
        finally:
            self._give_back(lease)
        return {"model": model, "tier": slot.tier.name, "answered": True, "latency_ms": latency_ms}

    def check_health(self, model: str) -> dict[str, Any]:
        """Run the golden check of ``model`` now (see :meth:`HealthKeeper.check`)."""
        return self.health.check(model)

    def health_tick(self) -> None:
        """Check every model that is HOT, or failing and due for a retry."""
        self.health.tick()

    def verify_cached(self, max_bytes: int) -> list[tuple[str, str, bool]]:
        """Re-hash cached snapshots, at most ``max_bytes`` (see :meth:`HealthKeeper.verify_cached`)."""
        return self.health.verify_cached(max_bytes)

    # --- reporting ------------------------------------------------------------------------

    def publish(self, slot: Slot) -> None:
        if self.slots.get(slot.model) is not slot:
            return  # a staged version (workers/versions.py) or a retired slot: nothing to show
        self.registry.put_model(self.worker, slot.state())

    def republish(self) -> None:
        """Publish every model's state again (the registry lost it: Redis restarted empty)."""
        for slot in list(self.slots.values()):
            if slot.tier > Tier.REMOTE and not slot.retired:
                self.publish(slot)

    def usage(self) -> dict[str, int]:
        residents = self.residents()
        return {
            "host_bytes": used_bytes(residents, Tier.HOST) + self._reservations.total(Tier.HOST),
            "device_bytes": used_bytes(residents, Tier.DEVICE) + self._reservations.total(Tier.DEVICE),
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
            "models": {m: s.state() for m, s in list(self.slots.items())},
            "staged": self.versions.status(),
            "staging": self.versions.staging(),
        }
