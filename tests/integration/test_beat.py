"""The beat against a real redis-server and real worker processes."""

from __future__ import annotations

import logging
import shutil
import threading
import time

import pytest
import torch

from warmstart.infra.celery_app import TASK_DEMOTE, TASK_HEALTH_CHECK, TASK_KEEP_WARM, TASK_PREWARM
from warmstart.infra.redis_client import connect, key
from warmstart.infra.services import EmbeddedS3, apply_test_credentials
from warmstart.infra.settings import load_settings
from warmstart.snapshot.manifest import ArchitectureSpec
from warmstart.snapshot.publish import publish_module
from warmstart.snapshot.stores import open_store_url
from warmstart.snapshot.stores.s3 import S3Store
from warmstart.scheduler.beat import BeatScheduler
from warmstart.scheduler.traffic import TrafficRecorder
from tests.helpers import wait_for
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


# --- the lease: two beats racing ----------------------------------------------------------


def test_a_beat_does_not_release_a_lease_another_beat_took_meanwhile(settings, monkeypatch) -> None:
    """The first beat's lease expires (a long pause) and the second takes it while the first
    is releasing it: the first must not delete the second's lease."""
    first, second = BeatScheduler(settings), BeatScheduler(settings)
    assert first.acquire_lease()
    plain = connect(settings.redis_url)
    send = first.client.execute_command
    raced: list[str] = []

    def expire_and_take(*args, **options):  # noqa: ANN002, ANN003, ANN202
        result = send(*args, **options)
        if not raced and str(args[0]).upper() in ("GET", "EVALSHA", "EVAL"):
            raced.append(str(args[0]))
            plain.delete(key("beat", "leader"))  # expired...
            assert second.acquire_lease()  # ...and taken by the second beat
        return result

    monkeypatch.setattr(first.client, "execute_command", expire_and_take)
    first.release_lease()
    assert raced
    assert plain.get(key("beat", "leader")) == second.id
    assert second.tick().leader and not first.tick().leader


def test_racing_beats_never_both_lead(settings) -> None:
    """Two beats acquiring and releasing over and over: whoever holds the key is the one
    that last took it, and a release by the other never frees it."""
    beats = [BeatScheduler(settings), BeatScheduler(settings)]
    plain = connect(settings.redis_url)
    errors: list[str] = []

    def run(me: BeatScheduler) -> None:
        for _ in range(300):
            if me.acquire_lease():
                holder = plain.get(key("beat", "leader"))
                if holder not in (me.id, None):
                    errors.append(f"{me.id} acquired while {holder} holds the lease")
            me.release_lease()

    threads = [threading.Thread(target=run, args=(b,)) for b in beats]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --- a model a request just warmed -------------------------------------------------------

BUDGETS = {"device_bytes": 2**30, "host_bytes": 2**30, "cache_bytes": 2**32}


def report_hot(registry: WorkerRegistry, worker: str, model: str, hot_at: float, *, lazy: bool) -> None:
    """What a worker publishes once ``model`` is HOT: ``warmed_by_request`` says whether a
    lazy (request) warm-up or a planned pre-warm made it so."""
    registry.heartbeat(worker, {"budgets": BUDGETS}, 60)
    registry.put_model(worker, {"model": model, "tier": "HOT", "consuming": True, "health": "ok",
                                "size_bytes": 4096, "warmup_runs": 0 if lazy else 5,
                                "warmed_by_request": lazy, "hot_at": hot_at})


@pytest.mark.parametrize("profile", ["dev", "prod"])
@pytest.mark.parametrize("policy", ["warmstart", "hybrid", "fixed-10"])
def test_a_model_a_request_just_warmed_is_kept(worker_settings, publish, profile, policy) -> None:
    """A lazy pre-warm made the model HOT; its request's minute is not complete, so the
    policy has seen no arrival. The tick keeps it HOT (its policy's first-gap hold)."""
    settings = load_settings(**{**worker_settings, "profile": profile, "policy": policy})
    publish("fresh")
    registry = WorkerRegistry(connect(settings.redis_url))
    now = time.time()
    report_hot(registry, "w-fresh", "fresh", now, lazy=True)
    beat = BeatScheduler(settings)
    for later_s in (1, 180):  # in the same minute, and three minutes on
        report = beat.tick(now_s=now + later_s)
        assert report.decisions["fresh"]["tier"] == "HOT", later_s
        assert not [s for s in report.sent if s.get("model") == "fresh" and s["task"] in (TASK_DEMOTE, TASK_PREWARM)]


def test_a_model_the_beat_warmed_is_not_held_by_the_request_rule(worker_settings, publish) -> None:
    """A model the beat itself pre-warmed (warm-up runs done) gets no request hold."""
    settings = load_settings(**{**worker_settings, "profile": "prod"})
    publish("planned")
    registry = WorkerRegistry(connect(settings.redis_url))
    now = time.time()
    report_hot(registry, "w-planned", "planned", now, lazy=False)
    beat = BeatScheduler(settings)
    report = beat.tick(now_s=now + 1)
    assert report.decisions["planned"]["tier"] != "HOT"
    # The demotion names the tier it was decided on: a worker where the model is warmer by the
    # time it arrives (a request warmed it meanwhile) leaves it as it is (ModelPool.demote).
    assert {"task": TASK_DEMOTE, "worker": "w-planned", "model": "planned", "tier": "DISK", "seen": "HOT"} in report.sent
    # The same demotion is not sent again while it is in flight ...
    assert not [s for s in beat.tick(now_s=now + 2).sent if s.get("model") == "planned"]
    # ... but one decided on another tier is another demotion: the first may have found the
    # model elsewhere than it was decided on, and left it.
    registry.put_model("w-planned", {"model": "planned", "tier": "HOST", "consuming": False, "health": "ok",
                                     "size_bytes": 4096, "warmup_runs": 5, "warmed_by_request": False})
    again = beat.tick(now_s=now + 3)
    assert {"task": TASK_DEMOTE, "worker": "w-planned", "model": "planned", "tier": "DISK", "seen": "HOST"} in again.sent


# --- the store goes away -------------------------------------------------------------------


@pytest.fixture(params=["file", "s3"])
def store_that_fails(request, worker_settings, tmp_path):  # noqa: ANN001, ANN201
    """``(settings overrides, publish(model), break())``: a store that becomes unreachable —
    a file store whose folder is removed, or an S3 endpoint that is stopped."""
    if request.param == "file":
        root = tmp_path / "outage-store"
        yield ({"store_url": f"file://{root}"}, lambda model: publish_tiny(open_store_url(f"file://{root}"), model),
               lambda: shutil.rmtree(root))
        return
    apply_test_credentials()
    with EmbeddedS3() as s3:
        S3Store("outage", "models", endpoint_url=s3.url).ensure_bucket()
        yield ({"store_url": "s3://outage/models", "s3_endpoint_url": s3.url},
               lambda model: publish_tiny(S3Store("outage", "models", endpoint_url=s3.url), model),
               s3.stop)


def publish_tiny(store, model: str) -> None:  # noqa: ANN001
    from tests.integration.conftest import TINY_INPUTS
    from tests.models import TINY, build_tiny

    publish_module(store, model, "v1", build_tiny().eval(), ArchitectureSpec(TINY, {}), TINY_INPUTS,
                   {"x": torch.randn(2, 8)}, show_progress=False, allowed_architectures=[TINY])


def test_the_beat_goes_on_when_the_store_is_unreachable(worker_settings, store_that_fails, caplog) -> None:
    overrides, publish_model, break_store = store_that_fails
    settings = load_settings(**{**worker_settings, **overrides, "profile": "prod", "policy": "hybrid",
                                "catalog_ttl_s": 0, "keep_warm_interval_s": 1e-6,
                                "health_interval_s": 1e-6})
    publish_model("busy")
    registry = WorkerRegistry(connect(settings.redis_url))
    registry.heartbeat("w-store", {"budgets": BUDGETS}, 60)
    registry.put_model("w-store", {"model": "busy", "tier": "HOT", "consuming": True, "size_bytes": 4096,
                                   "warmup_runs": 5, "hot_at": time.time() - 3600})
    now_min = int(time.time() // 60)
    record_minutes(settings, "busy", list(range(now_min - 30, now_min)))  # every minute
    beat = BeatScheduler(settings)
    keep_warm = {"task": TASK_KEEP_WARM, "worker": "w-store", "model": "busy"}
    health = {"task": TASK_HEALTH_CHECK, "worker": "w-store"}
    first = beat.tick()
    assert keep_warm in first.sent and health in first.sent

    break_store()
    with caplog.at_level(logging.WARNING, logger="warmstart.scheduler"):
        for _ in range(2):
            report = beat.tick()
            assert report.leader and keep_warm in report.sent and health in report.sent
            assert report.decisions["busy"]["tier"] == "HOT"
            assert not [s for s in report.sent if s.get("model") == "busy" and s["task"] == TASK_DEMOTE]
    outage = [r for r in caplog.records if "last catalog" in r.getMessage()]
    assert len(outage) == 1  # once per outage, not once per tick
