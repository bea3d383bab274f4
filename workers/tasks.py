"""The Celery tasks of a worker. Thin: validate the arguments, call the pool once, answer JSON.

Errors are answered, not raised: the task succeeds with ``{"ok": false, "error": …}`` so that
a bad request is acknowledged once and never retried, and the client re-raises the same typed
error (:func:`warmstart.infra.errors.error_from_dict`). That holds for arguments too: every
task takes ``*args, **kwargs`` and checks them itself, so a missing or unknown argument is an
:class:`InvalidInputError` answer naming it, not a ``TypeError`` that fails the task; and for
a message the worker refused to decode (:class:`RefusedMessage`: over
``WARMSTART_MAX_MESSAGE_BYTES``, or JSON nested too deeply), which is answered with its error.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.signals import worker_init

from warmstart.infra.celery_app import (
    TASK_DEMOTE,
    TASK_ECHO,
    TASK_HEALTH_CHECK,
    TASK_INFER,
    TASK_KEEP_WARM,
    TASK_PREWARM,
    TASK_STATUS,
    TASK_VERSION,
    RefusedMessage,
    app,
    app_settings,
    install_message_limit,
)
from warmstart.infra.errors import (
    InvalidInputError,
    ModelExecutionError,
    RequestCrashedWorkersError,
    WarmstartError,
)
from warmstart.snapshot.names import validate_name
from warmstart.workers.runtime import current_runtime
from warmstart.workers.tiers import Tier

log = logging.getLogger(__name__)


@worker_init.connect(weak=False)
def _limit_messages(sender: Any, **_: Any) -> None:
    """In a worker, decode no message over WARMSTART_MAX_MESSAGE_BYTES (see RefusedMessage)."""
    install_message_limit(app_settings(sender.app).max_message_bytes)


def _signature(*required: str, **optional: Any) -> inspect.Signature:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature(
        [inspect.Parameter(name, kind) for name in required]
        + [inspect.Parameter(name, kind, default=default) for name, default in optional.items()]
    )


INFER_ARGS = _signature("model", "inputs")
PREWARM_ARGS = _signature("model", tier="HOT", version=None, lazy=False)
DEMOTE_ARGS = _signature("model", tier="HOST", seen=None)
KEEP_WARM_ARGS = _signature("model")
HEALTH_CHECK_ARGS = _signature(model=None)
STATUS_ARGS = _signature()
ECHO_ARGS = _signature(payload=None)
VERSION_ARGS = _signature("model", "version", "action", share=None, serving=False)


def bind_arguments(task: str, signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A task's arguments by name, defaults filled in.

    Raises:
        InvalidInputError: an argument is missing, unknown or given twice (naming it and the
            arguments the task takes).
        WarmstartError: the message was refused before decoding (the refusal's own error).
    """
    for value in args:
        if isinstance(value, RefusedMessage):
            raise value.error
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as e:
        raise InvalidInputError(f"{task}: {e}; it takes ({', '.join(map(str, signature.parameters.values()))})") from e
    bound.apply_defaults()
    return dict(bound.arguments)


def _answer(task: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``{"ok": true, **work()}``, or ``{"ok": false, "error": …}`` for any Exception:
    a WarmstartError answers itself, anything else as ModelExecutionError (logged with its
    traceback). Only what is not an Exception (KeyboardInterrupt, SystemExit) propagates."""
    try:
        return {"ok": True, **work()}
    except WarmstartError as e:
        log.info("%s answered with %s: %s", task, type(e).__name__, e)
        return {"ok": False, "error": e.to_dict()}
    except Exception as e:
        log.exception("%s failed with %s", task, type(e).__name__)
        error = ModelExecutionError(f"{task} failed with {type(e).__name__}: {e}")
        return {"ok": False, "error": error.to_dict()}


def _tier(value: object) -> Tier:
    try:
        return Tier.parse(value)  # type: ignore[arg-type]
    except ValueError as e:
        raise InvalidInputError(str(e)) from e


def _queue_model(task: Task) -> str | None:
    """The model a request was sent for, from its queue (``infer.<model>``), when its body
    could not be read."""
    routing_key = str((task.request.delivery_info or {}).get("routing_key") or "")
    return routing_key.removeprefix("infer.") if routing_key.startswith("infer.") else None


@app.task(name=TASK_INFER, bind=True, acks_late=True, reject_on_worker_lost=True)
def infer(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Answer one inference request ``(model, inputs)`` for ``model`` (queue ``infer.<model>``)."""

    def work() -> dict[str, Any]:
        try:
            arguments = bind_arguments(TASK_INFER, INFER_ARGS, args, kwargs)
        except WarmstartError as e:
            model = _queue_model(self)
            raise type(e)(f"request for {model!r}: {e}" if model else str(e)) from e
        model = validate_name(arguments["model"])
        runtime = current_runtime()
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
        return runtime.pool.infer(model, arguments["inputs"])

    return _answer(TASK_INFER, work)


@app.task(name=TASK_PREWARM, bind=True, acks_late=True, reject_on_worker_lost=True)
def prewarm(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``(model, tier="HOT", version=None, lazy=False)``: raise ``model`` to ``tier`` here.
    ``lazy``: sent by a client whose request is waiting."""

    def work() -> dict[str, Any]:
        arguments = bind_arguments(TASK_PREWARM, PREWARM_ARGS, args, kwargs)
        model, version, lazy = validate_name(arguments["model"]), arguments["version"], arguments["lazy"]
        if version is not None:
            validate_name(version, "version")
        if not isinstance(lazy, bool):
            raise InvalidInputError(f"{TASK_PREWARM}: lazy must be true or false, got {lazy!r}")
        tier = _tier(arguments["tier"])
        runtime = current_runtime()
        if not lazy and runtime.joining.defer(model, tier, version):
            # The worker is warming the planner's assignment: this runs after it, in order
            # (workers/joining.py), rather than loading beside it.
            slot = runtime.pool.slots.get(model)
            return {"worker": runtime.name, "model": model, "tier": slot.tier.name if slot else "REMOTE",
                    "version": slot.version if slot else None, "deferred": True}  # fmt: skip
        try:
            slot = runtime.pool.ensure(model, tier, version, urgent=lazy)
        finally:
            if lazy:  # a lazy pre-warm's id is its claim's token: release that claim only
                runtime.registry.release_prewarm(model, str(self.request.id))
        return {"worker": runtime.name, "model": model, "tier": slot.tier.name, "version": slot.version}

    return _answer(TASK_PREWARM, work)


@app.task(name=TASK_DEMOTE, acks_late=True)
def demote(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``(model, tier="HOST", seen=None)``: lower ``model`` to ``tier`` here (HOT → DEVICE stops
    consuming its queue first). ``seen``: the tier the sender decided on; a model warmer than
    that by now is left as it is (see :meth:`ModelPool.demote`)."""

    def work() -> dict[str, Any]:
        arguments = bind_arguments(TASK_DEMOTE, DEMOTE_ARGS, args, kwargs)
        model, tier = validate_name(arguments["model"]), _tier(arguments["tier"])
        seen = None if arguments["seen"] is None else _tier(arguments["seen"])
        runtime = current_runtime()
        return {"worker": runtime.name, "model": model, "tier": runtime.pool.demote(model, tier, seen).tier.name}

    return _answer(TASK_DEMOTE, work)


@app.task(name=TASK_KEEP_WARM)
def keep_warm(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``(model)``: a tiny inference that proves ``model`` still answers and refreshes its idle clock."""

    def work() -> dict[str, Any]:
        model = validate_name(bind_arguments(TASK_KEEP_WARM, KEEP_WARM_ARGS, args, kwargs)["model"])
        return current_runtime().pool.keep_warm(model)

    return _answer(TASK_KEEP_WARM, work)


@app.task(name=TASK_HEALTH_CHECK)
def health_check(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``(model=None)``: golden-check one model (or every HOT or failing one) now."""

    def work() -> dict[str, Any]:
        model = bind_arguments(TASK_HEALTH_CHECK, HEALTH_CHECK_ARGS, args, kwargs)["model"]
        pool = current_runtime().pool
        if model is None:
            pool.health_tick()
            return {"checked": sorted(pool.slots)}
        return pool.check_health(validate_name(model))

    return _answer(TASK_HEALTH_CHECK, work)


@app.task(name=TASK_STATUS)
def status(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``()``: this worker's budgets, use and models."""

    def work() -> dict[str, Any]:
        bind_arguments(TASK_STATUS, STATUS_ARGS, args, kwargs)
        return current_runtime().pool.status()

    return _answer(TASK_STATUS, work)


@app.task(name=TASK_VERSION)
def version(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``(model, version, action, share=None, serving=False)``: ``stage`` a version beside the
    serving one (restored, warmed up and golden-checked, no traffic; ``serving``: make the
    serving version HOT here first, for a canary worker that did not hold it), ``shadow``
    (replay recent real requests through both and report), ``canary`` (answer ``share`` of
    live requests with it, counting both versions), ``canary_report``, ``switch`` to the
    staged version without closing the model's queue, or ``discard`` it (also a stage in
    progress) (workers/versions.py; `warmstart alias`, `warmstart deploy`)."""

    def work() -> dict[str, Any]:
        arguments = bind_arguments(TASK_VERSION, VERSION_ARGS, args, kwargs)
        model = validate_name(arguments["model"])
        name = validate_name(arguments["version"], "version")
        versions = current_runtime().pool.versions
        action = arguments["action"]
        if action == "stage":
            if not isinstance(arguments["serving"], bool):
                raise InvalidInputError(f"{TASK_VERSION}: serving must be true or false, got {arguments['serving']!r}")
            return versions.stage(model, name, serving=arguments["serving"])
        if action == "switch":
            return versions.switch(model, name)
        if action == "discard":
            return {"model": model, "version": name, "discarded": versions.discard(model)}
        if action == "shadow":
            return versions.shadow(model, name)
        if action == "canary":
            return versions.start_canary(model, name, arguments["share"])
        if action == "canary_report":
            return versions.canary_report(model)
        raise InvalidInputError(
            f"{TASK_VERSION}: action must be stage, shadow, canary, canary_report, switch or discard, got {action!r}")

    return _answer(TASK_VERSION, work)


@app.task(name=TASK_ECHO)
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``(payload=None)``: answers its payload: the bare round trip the serving benchmark
    compares against."""
    return _answer(TASK_ECHO, lambda: {"payload": bind_arguments(TASK_ECHO, ECHO_ARGS, args, kwargs)["payload"]})
