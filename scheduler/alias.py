"""Moving a model's alias with no request waiting for a restore (``warmstart alias``).

Moving ``live`` changes what every worker serves, so it is done in four steps:

1. check that the version is published (and read its manifest);
2. **stage** it on every worker where the model is HOT (:mod:`warmstart.workers.versions`):
   fetched and verified, restored beside the serving version, warmed up and golden-checked,
   while the old version keeps answering. If any worker cannot (not published, a snapshot that
   fails verification, a failed golden check), or none has room, every staged copy is
   discarded and the alias is left where it was: a typed :class:`RolloutError` says which
   worker and why;
3. move the alias in the store (one atomic put);
4. **switch** each of those workers to the staged version, without closing the model's
   queue; a worker that holds the model below HOT reloads it at its tier; a worker that made
   the model HOT meanwhile (from the old alias) is staged and switched in a second round.
   A serving worker that had no room for both versions (a ``BudgetError`` while others
   staged it) reloads last: it closes the model's queue, restores the new version and opens
   the queue again, while the switched workers answer.

Any other alias name (``canary``, ``previous`` …) serves no traffic by itself and is moved at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from warmstart.infra.celery_app import TASK_PREWARM, TASK_VERSION, control_queue, create_app
from warmstart.infra.errors import RolloutError, SnapshotNotFoundError
from warmstart.infra.redis_client import connect
from warmstart.infra.settings import Settings
from warmstart.snapshot.catalog import LIVE_ALIAS, get_alias, list_versions, read_manifest, set_alias
from warmstart.snapshot.names import validate_name
from warmstart.snapshot.stores import open_store
from warmstart.workers.registry import WorkerRegistry

log = logging.getLogger(__name__)


@dataclass
class AliasMove:
    """What one move did (printed by the CLI, read by tests)."""

    model: str
    alias: str
    version: str
    previous: str | None
    #: worker -> {"staged_s", "switched", ...} for the workers that served the model HOT.
    switched: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: workers that reload the new version: those that held the model below HOT (at their
    #: tier) and serving ones without room for both versions (HOT, after the others switched).
    reloaded: list[str] = field(default_factory=list)
    seconds: float = 0.0


def send_version_task(app: Celery, worker: str, model: str, version: str, action: str, **extra: Any) -> AsyncResult:
    """Send one ``warmstart.version`` task (stage, shadow, canary, canary_report, switch,
    discard) to a worker's control queue."""
    return app.send_task(TASK_VERSION, kwargs={"model": model, "version": version, "action": action, **extra},
                         queue=control_queue(worker))  # fmt: skip


class AliasMover:
    """Stages, moves and switches; one instance per command (or per rollout)."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or create_app(settings)
        self.registry = WorkerRegistry(connect(settings.redis_url))
        self.store = open_store(settings)

    def move(self, model: str, alias: str, version: str, timeout_s: float = 300.0) -> AliasMove:
        """Point ``alias`` of ``model`` at ``version``; for ``live``, with every serving worker
        switched to it before it takes traffic.

        Raises:
            InvalidNameError: a name is not safe.
            SnapshotNotFoundError: the version is not published (the message lists those that are).
            RolloutError: a worker could not stage the version (the alias is unchanged), or
                did not answer in time.
            StateUnavailableError: Redis cannot be reached.
        """
        validate_name(model)
        validate_name(alias, "alias")
        validate_name(version, "version")
        started = time.monotonic()
        try:
            read_manifest(self.store, model, version)
        except SnapshotNotFoundError as e:
            published = ", ".join(list_versions(self.store, model)) or "none"
            raise SnapshotNotFoundError(
                f"{e}; {model!r} has versions: {published} (`warmstart ls {model}`); publish "
                f"{version!r} first"
            ) from e
        previous = get_alias(self.store, model, alias)
        result = AliasMove(model, alias, version, previous)
        if alias != LIVE_ALIAS or previous == version:
            set_alias(self.store, model, alias, version)
            result.seconds = time.monotonic() - started
            return result
        serving = self._holders(model, hot=True, other_than=version)
        no_room = self._stage_all(model, version, serving, timeout_s, result)
        set_alias(self.store, model, alias, version)
        log.info("%s: %s -> %s (was %s)", model, alias, version, previous)
        self._switch_all(model, version, {w: t for w, t in serving.items() if w not in no_room}, timeout_s, result)
        late = self._holders(model, hot=True, other_than=version)  # made HOT from the old alias meanwhile
        late = {w: t for w, t in late.items() if w not in no_room}
        if late:
            no_room |= self._stage_all(model, version, late, timeout_s, result, alias_moved=True)
            self._switch_all(model, version, {w: t for w, t in late.items() if w not in no_room}, timeout_s, result)
        # A serving worker without room for both versions reloads once the others serve the
        # new one: it closes the model's queue, restores the new version and opens it again,
        # and the switched workers answer meanwhile, so no request waits for the restore.
        reload = {w: "HOT" for w in sorted(no_room)}
        reload.update(self._holders(model, hot=False, other_than=version))
        for worker, tier in reload.items():
            self.app.send_task(TASK_PREWARM, kwargs={"model": model, "tier": tier, "version": version},
                               queue=control_queue(worker))  # fmt: skip
            result.reloaded.append(worker)
        result.seconds = time.monotonic() - started
        return result

    # --- steps ----------------------------------------------------------------------------

    def _holders(self, model: str, *, hot: bool, other_than: str) -> dict[str, str]:
        """Live workers holding ``model`` at another version: HOT ones, or the others (worker -> tier)."""
        alive, _ = self.registry.workers()
        found = {}
        for worker in sorted(alive):
            state = self.registry.models_of(worker).get(model)
            if not state or state.get("version") == other_than or state.get("tier") in (None, "REMOTE"):
                continue
            if (state.get("tier") == "HOT") == hot:
                found[worker] = str(state["tier"])
        return found

    def _stage_all(self, model: str, version: str, workers: dict[str, str], timeout_s: float,
                   result: AliasMove, alias_moved: bool = False) -> set[str]:  # fmt: skip
        """Stage ``version`` on each worker; the workers that had no room for it beside the
        serving one (they reload after the others switch), when at least one other staged it.

        Raises:
            RolloutError: a worker failed otherwise, or none had room (all discarded).
        """
        answers = self._ask(model, version, "stage", workers, timeout_s)
        failed = {w: a for w, a in answers.items() if not a.get("ok")}
        no_room = {w for w, a in failed.items() if error_of(a)[0] == "BudgetError"}
        if no_room == set(failed) and len(no_room) < len(workers):
            for worker in no_room:
                log.info("%s has no room for %s %s beside the serving version: it reloads after the switch",
                         worker, model, version)  # fmt: skip
        elif failed:
            self._ask(model, version, "discard", workers, timeout_s)
            why = "; ".join(f"{w}: {_reason(a)}" for w, a in sorted(failed.items()))
            where = (f"the alias already points at {version!r}, and these workers go on serving the "
                     f"old version until they restart or are demoted" if alias_moved
                     else f"the alias stays at {result.previous!r}")  # fmt: skip
            raise RolloutError(
                f"version {version!r} of {model!r} could not be made ready beside the serving one ({why}); "
                f"{where}. Fix the version (or make room) and try again"
            )
        for worker, answer in answers.items():
            if worker not in no_room:
                result.switched[worker] = {"staged_s": answer.get("staged_s"), "switched": False}
        return no_room

    def _switch_all(self, model: str, version: str, workers: dict[str, str], timeout_s: float, result: AliasMove) -> None:
        answers = self._ask(model, version, "switch", workers, timeout_s)
        for worker, answer in answers.items():
            result.switched[worker]["switched"] = bool(answer.get("ok"))
            if not answer.get("ok"):
                # The alias has moved: this worker reloads the version the next time it is asked.
                log.warning("%s did not switch %s to %s: %s", worker, model, version, _reason(answer))
                result.switched[worker]["error"] = _reason(answer)

    def _ask(self, model: str, version: str, action: str, workers: dict[str, str], timeout_s: float) -> dict[str, dict[str, Any]]:
        """Send one version task to each worker (all at once) and collect the answers."""
        pending = {
            w: send_version_task(self.app, w, model, version, action)
            for w in workers
        }
        deadline = time.monotonic() + timeout_s
        answers: dict[str, dict[str, Any]] = {}
        for worker, async_result in pending.items():
            try:
                answer = async_result.get(timeout=max(0.1, deadline - time.monotonic()), disable_sync_subtasks=False)
            except Exception as e:  # a timeout, or a worker that died: an answer like any other
                answer = {"ok": False, "error": {"type": type(e).__name__, "message": f"no answer in time ({e})"}}
            finally:
                async_result.forget()
            answers[worker] = answer if isinstance(answer, dict) else {"ok": False, "error": {"message": repr(answer)}}
        return answers


def error_of(answer: Any) -> tuple[str, str]:
    """``(type, message)`` of a failed ``warmstart.version`` answer (or of anything else a
    task returned)."""
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, dict):
        return "error", repr(answer)
    return str(error.get("type", "error")), str(error.get("message", error))


def _reason(answer: Any) -> str:
    return ": ".join(error_of(answer))
