"""Hand-over rules against a real Redis: a worker leaving waits until its HOT models are HOT
elsewhere; with no beat it stops at once; with no other live worker it gives up only once
that has held for ``settle_s`` (one missed heartbeat of the other worker is not enough)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from warmstart.infra.redis_client import connect
from warmstart.workers.handover import LEAVING, hand_over
from warmstart.workers.registry import WorkerRegistry


@pytest.fixture
def registry(redis_server: Any) -> WorkerRegistry:
    redis.Redis.from_url(redis_server.url).flushdb()
    return WorkerRegistry(connect(redis_server.url))


def _hot(registry: WorkerRegistry, worker: str, model: str = "m") -> None:
    registry.heartbeat(worker, {}, ttl_s=30)
    registry.put_model(worker, {"model": model, "tier": "HOT", "consuming": True})


def _planner(registry: WorkerRegistry) -> None:
    registry.client.set("ws:planner", "beat-1", px=30_000)


def test_without_a_beat_there_is_nobody_to_hand_over_to(registry: WorkerRegistry) -> None:
    _hot(registry, "a")
    registry.heartbeat("b", {}, ttl_s=30)
    assert hand_over(registry, "a", timeout_s=30, poll_s=0.01) == ["m"]
    assert registry.client.sismember(LEAVING, "a")


def test_a_missed_heartbeat_of_the_other_worker_does_not_end_the_hand_over(registry: WorkerRegistry) -> None:
    _hot(registry, "a")
    _planner(registry)
    # "b" is not alive when the hand-over starts (its heartbeat lapsed); it comes back and
    # takes the model before settle_s has passed.
    comes_back = threading.Timer(0.2, lambda: _hot(registry, "b"))
    comes_back.start()
    try:
        assert hand_over(registry, "a", timeout_s=30, poll_s=0.02, settle_s=10.0) == []
    finally:
        comes_back.cancel()


def test_with_no_other_worker_for_settle_s_it_gives_up(registry: WorkerRegistry) -> None:
    _hot(registry, "a")
    _planner(registry)
    assert hand_over(registry, "a", timeout_s=30, poll_s=0.01, settle_s=0.05) == ["m"]
