"""The Celery app: JSON only, at-least-once inference, stable task and queue names.

This module is the ground floor: it names tasks and queues and configures Celery, and knows
nothing of the layers above. The worker's tasks register themselves on :data:`app` when
:mod:`warmstart.workers.tasks` is imported; ``celery -A warmstart.app worker -P threads``
imports both (see :mod:`warmstart.app`). The app reads its settings from ``WARMSTART_*`` when
Celery first configures it (not at import time).

Wire protocol for any Celery client (see docs/workers.md)::

    send_task("warmstart.infer", kwargs={"model": "short-form", "inputs": {...}},
              queue="infer.short-form")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu import serialization
from kombu.utils import json as kombu_json

from warmstart.infra.errors import InvalidInputError, PayloadTooLargeError, WarmstartError
from warmstart.infra.settings import Settings, load_settings

TASK_INFER = "warmstart.infer"
TASK_PREWARM = "warmstart.prewarm"
TASK_DEMOTE = "warmstart.demote"
TASK_KEEP_WARM = "warmstart.keep_warm"
TASK_HEALTH_CHECK = "warmstart.health_check"
TASK_STATUS = "warmstart.status"
TASK_ECHO = "warmstart.echo"
TASK_VERSION = "warmstart.version"

#: Shared queue of lazy pre-warms: whichever worker has room takes it.
PREWARM_QUEUE = "warmstart.prewarm"


def infer_queue(model: str) -> str:
    """Queue of a model's inference requests; consumed only where the model is HOT."""
    return f"infer.{model}"


def control_queue(worker: str) -> str:
    """Queue of one worker's own control tasks (prewarm, demote, keep-warm, health, status)."""
    return f"warmstart.worker.{worker}"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from warmstart's: JSON only, acks late, prefetch 1."""
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # At-least-once: a request is acknowledged only after its answer is stored; a worker
        # killed mid-inference leaves it unacknowledged and Redis hands it to another worker
        # after the visibility timeout.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            # Sweep for abandoned messages often enough that the visibility timeout, not the
            # sweep period, bounds how late a dead worker's requests are answered.
            "unacked_restore_interval": max(1, min(10, int(settings.visibility_timeout_s // 4))),
            "unacked_restore_throttle": 1,
        },
        "task_default_queue": "warmstart.default",
        "task_create_missing_queues": True,
        # Clients delete an answer once they have read it; one nobody reads goes after this.
        "result_expires": settings.result_ttl_s,
        "result_extended": False,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "enable_utc": True,
    }


def create_app(settings: Settings | None = None) -> Celery:
    """A configured app. With no settings, they are read from the environment on first use."""
    celery_app = Celery("warmstart")
    celery_app.warmstart_settings = None  # type: ignore[attr-defined]
    if settings is not None:
        configure(celery_app, settings)

    @celery_app.on_configure.connect(weak=False)
    def _configure(sender: Celery, **_: Any) -> None:
        sender.conf.update(celery_config(app_settings(sender)))

    return celery_app


def configure(celery_app: Celery, settings: Settings) -> None:
    """(Re)configure an app from warmstart settings, which it then carries."""
    celery_app.warmstart_settings = settings  # type: ignore[attr-defined]
    celery_app.conf.update(celery_config(settings))


def app_settings(celery_app: Celery) -> Settings:
    """The warmstart settings an app carries (read from the environment if it has none)."""
    settings = getattr(celery_app, "warmstart_settings", None)
    if settings is None:
        settings = load_settings()
        celery_app.warmstart_settings = settings  # type: ignore[attr-defined]
    return settings


# --- message size ----------------------------------------------------------------------------

#: Bytes a task message carries on the broker besides its base64 body: kombu's JSON envelope
#: with Celery's headers (ids, the task name, argsrepr/kwargsrepr of at most 1 KiB each).
ENVELOPE_OVERHEAD_BYTES = 8 * 1024


def broker_message_bytes(body_bytes: int) -> int:
    """About the size of a task message in Redis whose JSON body is ``body_bytes`` long:
    kombu's Redis transport stores the body base64-encoded inside a JSON envelope."""
    return 4 * math.ceil(body_bytes / 3) + ENVELOPE_OVERHEAD_BYTES


class RefusedMessage:
    """Stands in for the arguments of a task message the worker would not decode (too large,
    or nested too deeply): the task answers with :attr:`error` instead of running."""

    __slots__ = ("error",)

    def __init__(self, error: WarmstartError) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"RefusedMessage({type(self.error).__name__}: {self.error})"


def limited_json_loads(max_bytes: int) -> Callable[[bytes | str], Any]:
    """kombu's JSON decoder, refusing a body over ``max_bytes`` without decoding it.

    A refused body (or one nested deeper than Python's JSON decoder goes) decodes to the
    arguments ``([RefusedMessage(error)], {}, {})`` of a Celery task message, so that the
    task is still run, answers the typed error and is acknowledged once, instead of the
    message being dropped with a decode error and its client waiting for nothing.
    """

    def loads(data: bytes | str) -> Any:
        if len(data) > max_bytes:
            return _refused(
                PayloadTooLargeError(
                    f"the message is {len(data)} bytes, over the workers' limit of {max_bytes} "
                    "(WARMSTART_MAX_MESSAGE_BYTES); send smaller batches, as base64 tensors rather "
                    "than nested lists"
                )
            )
        try:
            return kombu_json.loads(data)
        except RecursionError:
            return _refused(
                InvalidInputError("the message's JSON is nested too deeply to decode; send tensors as "
                                  '{"dtype", "shape", "data"} objects')
            )

    return loads


def _refused(error: WarmstartError) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    return [RefusedMessage(error)], {}, {}


def install_message_limit(max_bytes: int) -> None:
    """Make this process's JSON decoder refuse messages over ``max_bytes`` (workers only:
    a client decodes answers, which are bounded by the broker instead)."""
    serialization.register(
        "json", kombu_json.dumps, limited_json_loads(max_bytes),
        content_type="application/json", content_encoding="utf-8",
    )  # fmt: skip


#: The process-wide app, on which the worker's tasks register. Configured lazily from WARMSTART_*.
app = create_app()
