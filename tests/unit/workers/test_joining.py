"""Joining: what a starting worker warms first (the planner's assignment, its eager models, or
nothing), in which order, and what happens to the beat's pre-warms meanwhile. A real pool
over a local store, and the assignments in a real Redis."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from warmstart.infra.errors import WorkerError
from warmstart.infra.redis_client import connect
from warmstart.infra.tiers import Tier
from warmstart.workers.joining import Joining
from warmstart.workers.registry import WorkerRegistry
from tests.helpers import wait_for
from tests.unit.workers.conftest import PoolKit


@pytest.fixture
def registry(redis_server: Any) -> WorkerRegistry:
    redis.Redis.from_url(redis_server.url).flushdb()
    return WorkerRegistry(connect(redis_server.url))


def _opened(kit: PoolKit) -> list[str]:
    return [model for kind, model in kit.gate.events if kind == "open"]


def test_a_worker_under_a_planner_warms_its_assignment_in_order_then_the_queued_prewarms(
        kit: PoolKit, registry: WorkerRegistry) -> None:  # fmt: skip
    for model in ("a", "b", "c", "d"):
        kit.publish(model)
    pool = kit.make_pool(profile="prod", eager_models=["d"], join_wait_s=30)
    registry.publish_assignments({"w0": [("x", "HOT")]}, "beat-1", ttl_s=30)  # the planner runs
    joining = Joining(pool.settings, registry, pool, "w1")
    thread = threading.Thread(target=joining.run)
    thread.start()
    # While it waits for its assignment, a pre-warm from the beat is queued, not run.
    assert wait_for(lambda: joining.defer("c", Tier.HOT, None), timeout_s=10)
    assert pool.slots.get("c") is None
    assert joining.readiness() == (False, {"start_from": None, "start_list": [], "not_hot": []})
    registry.publish_assignments({"w1": [("b", "HOT"), ("a", "HOT"), ("c", "HOST")]}, "beat-1", ttl_s=30)
    thread.join(timeout=60)
    assert not thread.is_alive()

    assert joining.source == "planner" and joining.entries[0] == ("b", Tier.HOT)
    assert _opened(kit) == ["b", "a", "c"]  # the assignment's order, then the queued pre-warm
    assert pool.slots["c"].tier == Tier.HOT  # the pre-warm raised it past the planned HOST
    assert "d" not in pool.slots  # the planner decides: the local eager list is not warmed
    assert joining.readiness()[0]
    assert not joining.defer("a", Tier.HOT, None)  # joined: pre-warms run at once


def test_without_a_planner_a_worker_warms_its_eager_models_and_runs_prewarms_at_once(
        kit: PoolKit, registry: WorkerRegistry) -> None:  # fmt: skip
    kit.publish("e")
    pool = kit.make_pool(profile="prod", eager_models=["e"])
    joining = Joining(pool.settings, registry, pool, "w1")
    assert not joining.defer("e", Tier.HOT, None)  # no planner: nothing waits for it
    joining.run()
    assert joining.source == "eager" and _opened(kit) == ["e"] and joining.readiness()[0]


def _joins_with_eager_models(kit: PoolKit, registry: WorkerRegistry) -> None:
    pool = kit.make_pool(profile="prod", eager_models=["e"], join_wait_s=0.3)
    joining = Joining(pool.settings, registry, pool, "w1")
    joining.run()
    assert joining.source == "eager" and _opened(kit) == ["e"]


def test_a_planner_that_assigns_nothing_in_time_leaves_the_worker_to_its_eager_models(
        kit: PoolKit, registry: WorkerRegistry) -> None:  # fmt: skip
    kit.publish("e")
    registry.publish_assignments({}, "beat-1", ttl_s=30)
    _joins_with_eager_models(kit, registry)


def test_a_malformed_assignment_is_a_typed_error_and_the_worker_falls_back(
        kit: PoolKit, registry: WorkerRegistry) -> None:  # fmt: skip
    kit.publish("e")
    registry.publish_assignments({}, "beat-1", ttl_s=30)
    registry.client.set("ws:assignment:w1", '{"not": "a list"}')
    with pytest.raises(WorkerError, match="malformed"):
        registry.assignment("w1")
    _joins_with_eager_models(kit, registry)


def test_an_assignment_naming_a_missing_model_does_not_keep_the_rest_cold(
        kit: PoolKit, registry: WorkerRegistry) -> None:  # fmt: skip
    kit.publish("a")
    pool = kit.make_pool(profile="prod", join_wait_s=10)
    registry.publish_assignments({"w1": [("gone", "HOT"), ("a", "HOT"), ("a", "BOGUS")]}, "beat-1", ttl_s=30)
    joining = Joining(pool.settings, registry, pool, "w1")
    joining.run()
    assert _opened(kit) == ["a"]
    ready, details = joining.readiness()
    assert not ready and [w["model"] for w in details["not_hot"]] == ["gone"]  # it says which


def test_a_dev_worker_warms_nothing_at_start(kit: PoolKit, registry: WorkerRegistry) -> None:
    kit.publish("e")
    pool = kit.make_pool(profile="dev", eager_models=["e"])
    registry.publish_assignments({"w1": [("e", "HOT")]}, "beat-1", ttl_s=30)
    joining = Joining(pool.settings, registry, pool, "w1")
    joining.run()
    assert joining.source == "none" and _opened(kit) == [] and joining.readiness() == (
        True, {"start_from": "none", "start_list": [], "not_hot": []})


def test_a_restarted_worker_does_not_take_its_predecessors_assignment(registry: WorkerRegistry) -> None:
    registry.publish_assignments({"w1": [("a", "HOT")]}, "beat-1", ttl_s=30)
    assert registry.planner_alive() and registry.assignment("w1") == [("a", "HOT")]
    registry.clear_assignment("w1")
    assert registry.assignment("w1") is None and registry.planner_alive()
