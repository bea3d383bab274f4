"""The Celery tasks of a worker. Thin: validate the payload, call the pool once, answer JSON.

Typed errors are answered, not raised: the task succeeds with ``{"ok": false, "error": …}``
so that a bad request is acknowledged once and never retried, and the client re-raises the
same typed error (:func:`warmstart.infra.errors.error_from_dict`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from warmstart.infra.celery_app import (
    TASK_DEMOTE,
    TASK_ECHO,
    TASK_HEALTH_CHECK,
    TASK_INFER,
    TASK_KEEP_WARM,
    TASK_PREWARM,
    TASK_STATUS,
    app,
)
from celery import Task

from warmstart.infra.errors import InvalidInputError, RequestCrashedWorkersError, WarmstartError
from warmstart.snapshot.names import validate_name
from warmstart.workers.runtime import current_runtime
from warmstart.workers.tiers import Tier

log = logging.getLogger(__name__)


def _answer(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return {"ok": True, **work()}
    except WarmstartError as e:
        log.info("answered with %s: %s", type(e).__name__, e)
        return {"ok": False, "error": e.to_dict()}


def _tier(value: object) -> Tier:
    try:
        return Tier.parse(value)  # type: ignore[arg-type]
    except ValueError as e:
        raise InvalidInputError(str(e)) from e


@app.task(name=TASK_INFER, bind=True, acks_late=True, reject_on_worker_lost=True)
def infer(self: Task, model: str, inputs: Any) -> dict[str, Any]:
    """Answer one inference request for ``model`` (queue ``infer.<model>``)."""
    runtime = current_runtime()

    def work() -> dict[str, Any]:
        # A request handed back after its worker died is counted: one that kills every worker
        # that runs it is answered with an error after WARMSTART_MAX_DELIVERIES deliveries.
        if (self.request.delivery_info or {}).get("redelivered"):
            deliveries = 1 + runtime.registry.count_redelivery(str(self.request.id))
            if deliveries > runtime.settings.max_deliveries:
                raise RequestCrashedWorkersError(
                    f"request {self.request.id} for {model!r} was delivered {deliveries} times: the "
                    "workers running it died each time. It was not run again; check the inputs "
                    "against the model (this request may crash it)"
                )
        return runtime.pool.infer(validate_name(model), inputs)

    return _answer(work)


@app.task(name=TASK_PREWARM, acks_late=True, reject_on_worker_lost=True)
def prewarm(model: str, tier: str = "HOT", version: str | None = None, lazy: bool = False) -> dict[str, Any]:
    """Raise ``model`` to ``tier`` here. ``lazy``: sent by a client whose request is waiting."""
    runtime = current_runtime()

    def work() -> dict[str, Any]:
        validate_name(model)
        if version is not None:
            validate_name(version, "version")
        try:
            slot = runtime.pool.ensure(model, _tier(tier), version, urgent=lazy)
        finally:
            if lazy:
                runtime.registry.release_prewarm(model)
        return {"worker": runtime.name, "model": model, "tier": slot.tier.name, "version": slot.version}

    return _answer(work)


@app.task(name=TASK_DEMOTE, acks_late=True)
def demote(model: str, tier: str = "HOST") -> dict[str, Any]:
    """Lower ``model`` to ``tier`` here (HOT → DEVICE stops consuming its queue first)."""
    runtime = current_runtime()
    return _answer(
        lambda: {"worker": runtime.name, "model": model, "tier": runtime.pool.demote(validate_name(model), _tier(tier)).tier.name}
    )


@app.task(name=TASK_KEEP_WARM)
def keep_warm(model: str) -> dict[str, Any]:
    """A tiny inference that proves ``model`` still answers and refreshes its idle clock."""
    return _answer(lambda: current_runtime().pool.keep_warm(validate_name(model)))


@app.task(name=TASK_HEALTH_CHECK)
def health_check(model: str | None = None) -> dict[str, Any]:
    """Golden-check one model (or every HOT or failing one) now."""
    pool = current_runtime().pool

    def work() -> dict[str, Any]:
        if model is None:
            pool.health_tick()
            return {"checked": sorted(pool.slots)}
        return pool.check_health(validate_name(model))

    return _answer(work)


@app.task(name=TASK_STATUS)
def status() -> dict[str, Any]:
    """This worker's budgets, use and models."""
    return _answer(lambda: current_runtime().pool.status())


@app.task(name=TASK_ECHO)
def echo(payload: Any = None) -> dict[str, Any]:
    """Answers its payload: the bare round trip the serving benchmark compares against."""
    return {"ok": True, "payload": payload}
