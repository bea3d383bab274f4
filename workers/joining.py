"""How a worker joins: what it warms first, in which order, and when it is ready.

A worker that starts while a beat is planning (the registry's ``planner`` key is alive)
waits up to ``join_wait_s`` for the planner's assignment — the beat writes one for every
live worker each tick, so it comes one tick after the worker's first heartbeat — and warms
it in the planner's order, one model at a time: the first copy of a model that traffic is
about to need comes before a replica of a model that is already served elsewhere. With no
planner, or none within the wait, it warms its own eager models (``prod``). In ``dev`` it
warms nothing (load on demand).

While it warms a planner's assignment, the beat's own pre-warms for this worker (which the
same tick sent, sorted by name, not by rank) are queued behind the assignment and run by the
same thread afterwards, instead of loading beside it on other task threads: on a small
machine parallel loads only make the first model late. A lazy pre-warm (a request is
waiting for it) is never queued.

Readiness (``/readyz``): the start list has been decided and each model in it planned HOT
is HOT and consuming its queue.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from warmstart.infra.errors import WarmstartError
from warmstart.infra.settings import Settings
from warmstart.infra.tiers import Tier
from warmstart.workers.pool import ModelPool
from warmstart.workers.registry import WorkerRegistry

log = logging.getLogger(__name__)

#: How often a joining worker looks for its assignment.
_POLL_S = 0.1


class Joining:
    """The start warm-up of one worker (run once, on its own thread, by :meth:`run`)."""

    def __init__(self, settings: Settings, registry: WorkerRegistry | None, pool: ModelPool, worker: str,
                 stop: threading.Event | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.registry = registry
        self.pool = pool
        self.worker = worker
        self._stop = stop or threading.Event()
        self._lock = threading.Lock()  # guards source, entries, _deferred and _joined's setting
        self.source: str | None = None  # "planner", "eager" or "none" once decided
        self.entries: list[tuple[str, Tier]] = []
        self._deferred: list[tuple[str, Tier, str | None]] = []
        self._awaiting_planner = False  # a planner runs and its assignment has not come yet
        self._decided = threading.Event()
        self._joined = threading.Event()

    def wait_s(self) -> float:
        """How long to wait for the planner: two plan ticks and a second (the tick that sees
        the worker may have just begun), or ``join_wait_s`` when set."""
        if self.settings.join_wait_s is not None:
            return self.settings.join_wait_s
        return 2 * self.settings.plan_interval_s + 1.0

    # --- the thread -----------------------------------------------------------------------

    def run(self) -> None:
        """Decide the start list, warm it in order, then whatever pre-warms were queued."""
        try:
            entries, source = self._choose()
        except Exception as e:  # never leave readiness undecided
            log.error("could not choose what to warm at start: %s: %s", type(e).__name__, e)
            entries, source = [], "none"
        self.decide(entries, source)
        if entries:
            log.info("joining: warming %d model(s) from the %s first: %s", len(entries), source,
                     ", ".join(f"{m}@{t.name}" for m, t in entries))  # fmt: skip
        for model, tier in entries:
            self._warm(model, tier, None)
        while True:
            with self._lock:
                if not self._deferred:
                    self._joined.set()  # under the lock: defer() sees joined or is drained here
                    return
                model, tier, version = self._deferred.pop(0)
            self._warm(model, tier, version)

    def _choose(self) -> tuple[list[tuple[str, Tier]], str]:
        if self.settings.profile != "prod":
            return [], "none"
        wait_s = self.wait_s()
        if wait_s > 0 and self._planner_alive():
            with self._lock:
                self._awaiting_planner = True
            deadline = time.monotonic() + wait_s
            while not self._stop.is_set():
                got = self._assignment()
                if got is not None:
                    return got, "planner"
                if time.monotonic() >= deadline:
                    log.warning("no assignment from the planner within %.1f s: warming the eager models", wait_s)
                    break
                self._stop.wait(_POLL_S)
        return [(m, Tier.HOT) for m in self.settings.eager_models], "eager"

    def _planner_alive(self) -> bool:
        if self.registry is None:
            return False
        try:
            return self.registry.planner_alive()
        except WarmstartError as e:
            log.warning("could not ask whether a planner runs (%s): warming the eager models", e)
            return False

    def _assignment(self) -> list[tuple[str, Tier]] | None:
        if self.registry is None:
            return None
        try:
            raw = self.registry.assignment(self.worker)
        except WarmstartError as e:
            log.warning("could not read this worker's assignment: %s", e)
            return None
        if raw is None:
            return None
        entries = []
        for model, tier in raw:
            try:
                entries.append((model, Tier.parse(tier)))
            except ValueError:
                log.warning("the planner's assignment names an unknown tier %r for %s; skipped", tier, model)
        return entries

    def _warm(self, model: str, tier: Tier, version: str | None) -> None:
        # Each model on its own: one that cannot be warmed (not published, failing its check,
        # a forward that raises) must not keep the others cold.
        if self._stop.is_set():
            return
        try:
            self.pool.ensure(model, tier, version)
            log.info("joining: %s is %s", model, tier.name)
        except Exception as e:
            log.error("joining: %s could not be warmed to %s: %s: %s", model, tier.name, type(e).__name__, e)

    # --- other threads --------------------------------------------------------------------

    def decide(self, entries: list[tuple[str, Tier]], source: str) -> None:
        """Fix the start list (``source``: "planner", "eager" or "none"); readiness follows it."""
        with self._lock:
            self.entries, self.source = list(entries), source
        self._decided.set()

    def defer(self, model: str, tier: Tier, version: str | None) -> bool:
        """Queue a planner's pre-warm behind the assignment being awaited or warmed; False
        when the worker is not joining under a planner (run the pre-warm now)."""
        with self._lock:
            if self._joined.is_set() or not (self.source == "planner" or self._awaiting_planner):
                return False
            self._deferred.append((model, tier, version))
            return True

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """``(start list decided and its HOT models HOT, details for /readyz)``."""
        with self._lock:
            decided, entries, source = self._decided.is_set(), list(self.entries), self.source
        waiting = []
        for model, tier in entries:
            if tier != Tier.HOT:
                continue
            slot = self.pool.slots.get(model)
            if slot is None or slot.tier != Tier.HOT or not slot.consuming:
                waiting.append({"model": model, "tier": slot.tier.name if slot else "REMOTE",
                                "health": slot.health if slot else None})  # fmt: skip
        details = {"start_from": source, "start_list": [[m, t.name] for m, t in entries], "not_hot": waiting}
        return decided and not waiting, details
