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

from typing import Any

from celery import Celery

from warmstart.infra.settings import Settings, load_settings

TASK_INFER = "warmstart.infer"
TASK_PREWARM = "warmstart.prewarm"
TASK_DEMOTE = "warmstart.demote"
TASK_KEEP_WARM = "warmstart.keep_warm"
TASK_HEALTH_CHECK = "warmstart.health_check"
TASK_STATUS = "warmstart.status"
TASK_ECHO = "warmstart.echo"

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
        "result_expires": 3600,
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


#: The process-wide app, on which the worker's tasks register. Configured lazily from WARMSTART_*.
app = create_app()
