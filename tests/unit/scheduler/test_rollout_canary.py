"""Choosing the canary worker of a rollout: a worker serving the model with room for the new
version beside it; else a worker with room for both versions; else the serving worker with
the most room (which may still make room by demoting colder models)."""

from __future__ import annotations

from warmstart.scheduler.rollout import choose_canary


def worker(host_free: int, device_free: int | None = None, budget: int = 1000) -> dict:
    device_free = host_free if device_free is None else device_free
    return {"budgets": {"host_bytes": budget, "device_bytes": budget, "cache_bytes": 10**9},
            "usage": {"host_bytes": budget - host_free, "device_bytes": budget - device_free, "cache_bytes": 0}}


def test_a_serving_worker_with_room_beside_is_chosen_the_roomiest_first() -> None:
    workers = {"a": worker(150), "b": worker(400), "c": worker(900)}
    assert choose_canary(["a", "b"], workers, set(), new_bytes=100, serving_bytes=100) == ("b", False)
    # The device budget counts too: b has host room but no device room.
    workers["b"] = worker(400, device_free=50)
    assert choose_canary(["a", "b"], workers, set(), new_bytes=100, serving_bytes=100) == ("a", False)


def test_without_room_beside_a_worker_with_room_for_both_versions_serves_first() -> None:
    workers = {"a": worker(50), "b": worker(150), "c": worker(250)}
    assert choose_canary(["a"], workers, set(), new_bytes=100, serving_bytes=100) == ("c", True)
    # Room for the new version only is not enough there: it must serve the old one too.
    workers["c"] = worker(199)
    assert choose_canary(["a"], workers, set(), new_bytes=100, serving_bytes=100) == ("a", False)


def test_leaving_and_unknown_workers_are_never_chosen() -> None:
    workers = {"a": worker(500), "b": worker(500), "c": worker(900)}
    assert choose_canary(["a", "gone"], workers, {"a"}, new_bytes=100, serving_bytes=100) == ("c", True)
    assert choose_canary(["a"], workers, {"a", "b", "c"}, new_bytes=100, serving_bytes=100) == (None, False)
    assert choose_canary([], workers, set(), new_bytes=100, serving_bytes=100) == (None, False)


def test_a_worker_reporting_no_budgets_has_no_room() -> None:
    workers = {"a": {}, "b": {"budgets": "junk", "usage": None}}
    assert choose_canary(["a"], workers, set(), new_bytes=1, serving_bytes=1) == ("a", False)
