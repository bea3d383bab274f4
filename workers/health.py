"""Health upkeep of a worker's models: golden checks on a schedule, recovery of failing
models after their backoff, and re-verification of cached snapshots.

It works on the pool's slots under the pool's rule for shared state
(:mod:`warmstart.workers.pool`): every step on a model takes that model's lock first.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from warmstart.infra.errors import WarmstartError
from warmstart.infra.tiers import Tier
from warmstart.workers.slots import Slot

if TYPE_CHECKING:
    from warmstart.workers.pool import ModelPool

log = logging.getLogger(__name__)


class HealthKeeper:
    """Checks, recovers and re-verifies the models of one pool."""

    def __init__(self, pool: "ModelPool") -> None:
        self.pool = pool

    def check(self, model: str) -> dict[str, Any]:
        """Run the golden check now. A failure gates the model off at once; a failing model
        whose backoff has passed is re-warmed and re-checked, and re-joins when it passes.
        A failure also re-verifies the cached snapshot: a file changed on disk is evicted and
        fetched again."""
        with self.pool._locked(model) as slot:
            if slot.tier < Tier.DEVICE or slot.device_module is None:
                if slot.tier == Tier.REMOTE:
                    self.pool._retire(slot)
                return {"model": model, "tier": slot.tier.name, "checked": False}
            if slot.health == "failing":
                if time.monotonic() < slot.retry_at_s:
                    self._yield_error_gate(slot)
                    return {"model": model, "tier": slot.tier.name, "checked": False, "health": "failing"}
                try:
                    self.pool._ensure_locked(slot, Tier.HOT, None, urgent=False)
                    ok, reason = True, "ok"
                except WarmstartError as e:
                    ok, reason = False, str(e)
            else:
                result = self.pool._check(slot)
                ok, reason = result.ok, result.reason
                if ok:
                    self.pool.reopen_gate(slot)
            if not ok:
                self._reverify(slot)
            if not slot.retired:
                self.pool.publish(slot)
            return {"model": model, "tier": slot.tier.name, "checked": True, "ok": ok, "reason": reason}

    def _yield_error_gate(self, slot: Slot) -> None:
        """A failing model's queue is consumed only to answer requests nobody else can serve:
        once another worker serves the model, stop."""
        if slot.consuming and slot.tier != Tier.HOT and self.pool._served_elsewhere(slot.model):
            self.pool._close_gate(slot)

    def _reverify(self, slot: Slot) -> None:
        """After a failed check: if the cached file no longer matches its digest, start again
        from the store (the next promotion fetches a fresh copy)."""
        if slot.manifest is None:
            return
        tier, manifest = slot.tier, slot.manifest
        try:
            intact = self.pool.cache.verify(slot.model, manifest.version)
        except WarmstartError as e:
            log.warning("could not re-verify the cached %s: %s", slot.model, e)
            return
        if intact:
            return
        log.error("cached snapshot of %s %s changed on disk; fetching it again", slot.model, manifest.version)
        self.pool._demote_locked(slot, Tier.REMOTE)
        try:
            self.pool.ensure(slot.model, tier, manifest.version)
        except WarmstartError as e:
            log.error("re-fetching %s failed: %s", slot.model, e)

    def verify_cached(self, max_bytes: int) -> list[tuple[str, str, bool]]:
        """Re-hash cached snapshots in the background, at most ``max_bytes`` a call; a model
        held here whose file changed is fetched again and re-checked."""
        results = self.pool.cache.verify_next(max_bytes)
        for model, version, ok in results:
            slot = self.pool.slots.get(model)
            if not ok and slot is not None and slot.version == version:
                with self.pool._locked(model) as current:
                    if current.version != version:  # reloaded meanwhile: not this file any more
                        continue
                    tier = current.tier
                    log.error("cached snapshot of %s %s changed on disk; fetching it again", model, version)
                    self.pool._demote_locked(current, Tier.REMOTE)
                try:
                    self.pool.ensure(model, tier, version)
                except WarmstartError as e:
                    log.error("re-fetching %s failed: %s", model, e)
        return results

    def tick(self) -> None:
        """Check every model that is HOT, or failing and due for a retry."""
        for model in list(self.pool.slots):
            slot = self.pool.slots.get(model)
            if slot is not None and (slot.tier == Tier.HOT or slot.health == "failing"):
                try:
                    self.check(model)
                except Exception:  # one model's failure must not stop the others' checks
                    log.exception("health check of %s raised", model)
