"""The beat against a real redis-server and real worker processes."""

from __future__ import annotations

import time

import pytest

from warmstart.infra.redis_client import connect
from warmstart.infra.settings import load_settings
from warmstart.scheduler.beat import BeatScheduler
from warmstart.scheduler.traffic import TrafficRecorder
from tests.integration.test_workers import wait_for
from warmstart.workers.registry import WorkerRegistry

pytestmark = pytest.mark.integration


def record_minutes(settings, model: str, minutes: list[int]) -> None:  # noqa: ANN001
    recorder = TrafficRecorder(connect(settings.redis_url))
    for minute in minutes:
        recorder.record(model, now_s=minute * 60 + 1)


def test_a_tick_prewarms_a_model_before_its_predicted_arrival(worker_settings, publish, start_worker) -> None:
    settings = load_settings(**{**worker_settings, "profile": "prod", "policy": "hybrid"})
    publish("periodic")
    start_worker("w-beat", profile="prod")
    registry = WorkerRegistry(connect(settings.redis_url))
    now_min = int(time.time() // 60)
    # Every 10 minutes for four hours; the latest arrival 9 minutes before now.
    arrivals = [now_min - 9 - 10 * k for k in range(24)]
    record_minutes(settings, "periodic", arrivals)
    beat = BeatScheduler(settings)

    # Five minutes after an arrival the next one is still far: it is not made HOT (at most
    # kept in the local cache, DISK).
    early = beat.tick(now_s=(now_min - 4) * 60 + 30)
    assert early.leader and early.decisions["periodic"]["tier"] != "HOT"
    assert not [s for s in early.sent if s["task"] == "warmstart.prewarm" and s["tier"] == "HOT"]

    # Just before the next predicted arrival: pre-warm it on the worker.
    due = beat.tick(now_s=now_min * 60 + 30)
    assert due.decisions["periodic"]["tier"] == "HOT"
    assert {"task": "warmstart.prewarm", "worker": "w-beat", "model": "periodic", "tier": "HOT"} in due.sent
    wait_for(lambda: registry.hot_workers("periodic") == ["w-beat"], timeout_s=60)
    assert TrafficRecorder(connect(settings.redis_url)).last_arrival_minute("periodic") == max(arrivals)

    # A second tick does not send the same pre-warm again.
    again = beat.tick(now_s=now_min * 60 + 35)
    assert not [s for s in again.sent if s["task"] == "warmstart.prewarm" and s["tier"] == "HOT"]


def test_a_dead_workers_models_are_placed_on_another(worker_settings, publish, start_worker) -> None:
    settings = load_settings(**{**worker_settings, "profile": "prod", "policy": "hybrid"})
    publish("busy")
    workers = {name: start_worker(name, profile="prod") for name in ("w-one", "w-two")}
    registry = WorkerRegistry(connect(settings.redis_url))
    now_min = int(time.time() // 60)
    record_minutes(settings, "busy", list(range(now_min - 30, now_min)))  # every minute
    beat = BeatScheduler(settings)

    first = beat.tick()
    assert first.decisions["busy"]["tier"] == "HOT"
    holder = wait_for(lambda: registry.hot_workers("busy"), timeout_s=60)[0]
    other = next(name for name in workers if name != holder)

    workers[holder].kill()
    wait_for(lambda: holder in registry.workers()[1], timeout_s=30)
    report = beat.tick()
    assert holder in report.dead_workers
    assert {"task": "warmstart.prewarm", "worker": other, "model": "busy", "tier": "HOT"} in report.sent
    wait_for(lambda: registry.hot_workers("busy") == [other], timeout_s=60)
    assert holder not in registry.worker_names()


def test_only_one_beat_acts_at_a_time(settings, publish) -> None:
    first, second = BeatScheduler(settings), BeatScheduler(settings)
    assert first.tick().leader
    assert not second.tick().leader
    assert first.tick().leader
    first.release_lease()
    assert second.tick().leader


def test_requests_waiting_for_a_model_nobody_serves_are_rescued(settings, publish, start_worker) -> None:
    """A raw Celery client sends no pre-warm; the beat notices the waiting requests."""
    import torch

    from warmstart.infra.celery_app import create_app
    from warmstart.workers.wire import decode_outputs, encode_tensor

    module = publish("orphan")
    start_worker("w-rescuer")
    app = create_app(settings)
    x = torch.randn(2, 8)
    results = [
        app.send_task("warmstart.infer", kwargs={"model": "orphan", "inputs": {"x": encode_tensor(x)}}, queue="infer.orphan")
        for _ in range(5)
    ]
    registry = WorkerRegistry(connect(settings.redis_url))
    assert registry.queued_requests("orphan") == 5 and registry.hot_workers("orphan") == []
    report = BeatScheduler(settings).tick()
    assert {"task": "warmstart.prewarm", "worker": None, "model": "orphan", "tier": "HOT"} in report.sent
    with torch.inference_mode():
        want = module(x)
    for result in results:
        answer = result.get(timeout=60)
        torch.testing.assert_close(decode_outputs(answer["outputs"])["output"], want)
