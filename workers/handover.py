"""Handing a worker's models over before it stops (``warmstart drain``, SIGTERM, the local
scaler): the worker is marked as leaving, the beat places its models on other workers, and
the worker keeps serving until each model HOT on it is HOT on another live worker, or the
grace period is over. Only then does it stop taking requests and finish what is in flight.

Key (under ``ws:``)::

    scale:leaving   SET   workers that asked to leave; the planner places nothing on them, and
                          the scaling signal removes them first (scheduler/scale_signal.py)
"""

from __future__ import annotations

import time
import redis

from warmstart.infra.errors import UnknownWorkerError
from warmstart.infra.redis_client import key, redis_errors
from warmstart.workers.registry import WorkerRegistry

LEAVING = key("scale", "leaving")


def not_leaving(client: "redis.Redis[str]", worker: str) -> None:
    """Take ``worker`` off ``scale:leaving`` (it starts, or it has left): a later worker of the
    same name must not be kept empty."""
    with redis_errors(client, "clearing the leaving mark"):
        client.srem(LEAVING, worker)


#: How long "no other live worker" must hold, while a beat plans, before a hand-over gives
#: up: one missed heartbeat of the other worker is not a reason to stop with the models HOT
#: nowhere else.
NOBODY_SETTLE_S = 2.0


def hand_over(registry: WorkerRegistry, worker: str, timeout_s: float, poll_s: float = 1.0,
              settle_s: float = NOBODY_SETTLE_S) -> list[str]:  # fmt: skip
    """Ask the beat to place ``worker``'s models elsewhere (``scale:leaving``) and wait until
    each model HOT on it is HOT on another live worker, at most ``timeout_s``.

    Returns:
        The models not handed over in time (empty: done). With no beat planning, or no other
        live worker for ``settle_s`` in a row, there is nobody to hand over to: it returns
        then with every HOT model (demoted last, when the worker exits).

    Raises:
        UnknownWorkerError: no live worker has this name (nothing is marked).
        StateUnavailableError: Redis failed.
    """
    alive = registry.workers()[0]
    if worker not in alive:
        known = ", ".join(sorted(alive)) or "none"
        raise UnknownWorkerError(
            f"no live worker is named {worker!r} (live: {known}); `warmstart status` lists the workers"
        )
    with redis_errors(registry.client, "marking the worker as leaving"):
        registry.client.sadd(LEAVING, worker)
    deadline = time.monotonic() + timeout_s
    nobody_since: float | None = None
    while True:
        pending = [m for m, s in registry.models_of(worker).items() if s.get("tier") == "HOT"]
        pending = [m for m in pending if not [w for w in registry.hot_workers(m) if w != worker]]
        now = time.monotonic()
        if not pending or now >= deadline:
            return pending
        if not registry.planner_alive():
            return pending  # no beat: nobody places the models elsewhere
        # No other live worker: nobody can take them, once that holds for settle_s.
        if set(alive) <= {worker}:
            nobody_since = now if nobody_since is None else nobody_since
            if now - nobody_since >= min(settle_s, timeout_s):
                return pending
        else:
            nobody_since = None
        time.sleep(poll_s)
        alive = registry.workers()[0]
