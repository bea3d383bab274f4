"""The Celery app with warmstart's worker tasks registered: ``celery -A warmstart.app worker -P threads``.

Clients need none of this (they send tasks by name, see docs/workers.md); a worker process
does, and ``warmstart worker`` starts the same app.
"""

from __future__ import annotations

from warmstart.infra.celery_app import app
from warmstart.workers import tasks as _tasks  # noqa: F401  (registers the tasks on ``app``)

__all__ = ["app"]
