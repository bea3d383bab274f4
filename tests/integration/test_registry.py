"""The worker registry's shared decisions against a real redis-server: pre-warm claims,
forgetting a worker, and heartbeats after Redis lost everything."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import redis

from warmstart.infra.redis_client import connect, key
from warmstart.workers.registry import WorkerRegistry

pytestmark = pytest.mark.integration


class Interleaving(redis.Redis):  # type: ignore[type-arg]
    """A redis-py client that runs ``between()`` once, right after the first command named in
    ``after`` has returned: another client's writes land between two of this client's steps,
    at the worst moment, every time (instead of by chance under load)."""

    after: frozenset[str] = frozenset()
    between: Callable[[], None] | None = None

    def execute_command(self, *args: Any, **options: Any) -> Any:
        result = super().execute_command(*args, **options)
        if self.between is not None and str(args[0]).upper() in self.after:
            run, self.between = self.between, None
            run()
        return result


def interleaving(url: str, after: Iterable[str], between: Callable[[], None]) -> Interleaving:
    client = Interleaving.from_url(url, decode_responses=True)
    client.after, client.between = frozenset(after), between
    return client


def test_a_prewarm_claim_is_released_only_by_its_owner(redis_url: str) -> None:
    client = connect(redis_url)
    registry = WorkerRegistry(client)
    first = registry.claim_prewarm("m", 30)
    assert isinstance(first, str) and first  # a token, truthy like the old True
    assert not registry.claim_prewarm("m", 30)
    # The first pre-warm outlives its claim (a long download); a second request claims anew.
    client.delete(key("prewarm-claim", "m"))
    second = registry.claim_prewarm("m", 30)
    assert second and second != first
    # The first pre-warm ends: releasing must not free the second one's claim.
    assert registry.release_prewarm("m", first) is False
    assert not registry.claim_prewarm("m", 30)
    assert registry.release_prewarm("m", second) is True
    assert registry.claim_prewarm("m", 30)


def test_forgetting_a_worker_is_one_step(redis_url: str) -> None:
    """A model published while the worker is being forgotten is either gone from both the
    worker's models and the hot set, or in both: never HOT for a worker that holds nothing."""
    writer = WorkerRegistry(connect(redis_url))
    writer.heartbeat("w", {}, 30)
    writer.put_model("w", {"model": "a", "tier": "HOT", "consuming": True})

    def publish_late() -> None:
        writer.put_model("w", {"model": "late", "tier": "HOT", "consuming": True})

    client = interleaving(redis_url, {"HKEYS", "HGETALL", "EVALSHA", "EVAL"}, publish_late)
    WorkerRegistry(client).forget_worker("w")
    plain = connect(redis_url)
    assert "w" not in plain.smembers(key("hot", "a"))
    hot_late = "w" in plain.smembers(key("hot", "late"))
    held_late = "late" in plain.hgetall(key("worker", "w", "models"))
    assert hot_late == held_late


def test_forgetting_a_worker_clears_its_hot_sets(redis_url: str) -> None:
    registry = WorkerRegistry(connect(redis_url))
    registry.heartbeat("w", {}, 30)
    registry.heartbeat("v", {}, 30)
    for worker in ("w", "v"):
        registry.put_model(worker, {"model": "a", "tier": "HOT", "consuming": True})
    registry.put_model("w", {"model": "b", "tier": "HOST"})
    registry.forget_worker("w")
    assert registry.hot_workers("a") == ["v"] and registry.models_of("w") == {}
    assert registry.worker_names() == ["v"]


def test_a_heartbeat_says_when_the_registry_lost_the_worker(redis_url: str) -> None:
    client = connect(redis_url)
    registry = WorkerRegistry(client)
    assert registry.heartbeat("w", {"usage": {}}, 30) is True  # first one: nothing published yet
    registry.put_model("w", {"model": "a", "tier": "HOT", "consuming": True})
    assert registry.heartbeat("w", {"usage": {}}, 30) is False
    # Redis restarted empty: the next heartbeat says so, and the worker publishes again.
    client.flushdb()
    assert registry.heartbeat("w", {"usage": {}}, 30) is True
    registry.put_model("w", {"model": "a", "tier": "HOT", "consuming": True})
    assert registry.hot_workers("a") == ["w"]
    assert registry.heartbeat("w", {"usage": {}}, 30) is False
    # The beat declared it dead (a long pause) and forgot it.
    registry.forget_worker("w")
    assert registry.heartbeat("w", {"usage": {}}, 30) is True
    # Its heartbeat expired, not yet forgotten.
    client.delete(key("worker", "w"))
    assert registry.heartbeat("w", {"usage": {}}, 30) is True
    assert registry.heartbeat("w", {"usage": {}}, 30) is False
