"""desired_workers from a live beat (in-process) over real workers: it rises ahead of a surge
the earlier days recorded, and a leaving worker hands its HOT models over before it goes."""

from __future__ import annotations

import threading
import time

import pytest

from warmstart.infra.redis_client import connect
from warmstart.infra.settings import load_settings
from warmstart.scheduler.beat import BeatScheduler
from warmstart.scheduler.scale_signal import read_desired
from warmstart.workers.handover import hand_over
from warmstart.scheduler.scaling import DAY_MIN
from warmstart.scheduler.traffic import TrafficRecorder
from warmstart.workers.registry import WorkerRegistry

pytestmark = pytest.mark.integration


def _gauge(beat: BeatScheduler) -> float | None:
    return beat.probes.metrics.registry.get_sample_value("warmstart_desired_workers", {"pool": "default"})


def test_desired_workers_rises_ahead_of_a_surge_seen_on_earlier_days(worker_settings, publish, start_worker) -> None:
    publish("slow-m", delay_s=0.05)
    common = {"profile": "prod", "eager_models": ["slow-m"]}
    start_worker("w-a", **common)
    settings = load_settings(**{**worker_settings, **common, "worker_concurrency": 4, "scale_worker_start_s": 0,
                                "scale_min_workers": 1, "scale_max_workers": 5, "scale_drain": True})  # fmt: skip
    registry = WorkerRegistry(connect(settings.redis_url))
    deadline = time.monotonic() + 60
    while (registry.models_of("w-a").get("slow-m", {}).get("settled_latency_ms") or 0) <= 0:
        assert time.monotonic() < deadline, "the eager model never reported its latency"
        time.sleep(0.2)
    beat = BeatScheduler(settings)
    traffic = TrafficRecorder(beat.client, settings.traffic_retention_min, settings.traffic_minute_s)
    now_s = time.time()
    day_s = DAY_MIN * settings.traffic_minute_s

    # Yesterday's surge came 5 minutes after this time of day: beyond the lead time, not yet.
    traffic.record("slow-m", 6000, now_s=now_s - day_s + 5 * settings.traffic_minute_s)
    beat.tick(now_s)
    assert read_desired(beat.client)["workers"] == 1 and _gauge(beat) == 1

    # The day before, it came a minute after now: within the lead time, so the signal rises now,
    # before any request of today's surge: 6000/2 a minute × ~0.05 s / (4 slots × 0.7) -> 1+.
    traffic.record("slow-m", 6000, now_s=now_s - 2 * day_s + 1 * settings.traffic_minute_s)
    beat.tick(now_s)
    published = read_desired(beat.client)
    assert published["workers"] >= 2 and published["compute_workers"] >= 2 and _gauge(beat) == published["workers"]


def test_a_leaving_worker_hands_its_hot_models_over_and_the_signal_falls_after(worker_settings, publish, start_worker) -> None:
    publish("hand-m")
    start_worker("w-a")
    # One HOT copy, placed by the planner: the policy keeps a model HOT 10 minutes after a request.
    settings = load_settings(**{**worker_settings, "profile": "prod", "policy": "fixed-10", "plan_interval_s": 0.3,
                                "scale_min_workers": 1, "scale_max_workers": 3, "scale_drain": True})  # fmt: skip
    registry = WorkerRegistry(connect(settings.redis_url))
    beat = BeatScheduler(settings)
    TrafficRecorder(beat.client, settings.traffic_retention_min, settings.traffic_minute_s).record(
        "hand-m", 3, now_s=time.time() - settings.traffic_minute_s)
    stop = threading.Event()
    ticker = threading.Thread(target=lambda: [beat.tick() or stop.wait(0.3) for _ in iter(stop.is_set, True)], daemon=True)
    ticker.start()
    try:
        deadline = time.monotonic() + 60
        while registry.hot_workers("hand-m") != ["w-a"]:
            assert time.monotonic() < deadline, "the planner never placed the model"
            time.sleep(0.1)
        start_worker("w-b")  # the signal wants one worker: w-b (empty) is the one to let go
        deadline = time.monotonic() + 30
        while (read_desired(beat.client) or {}).get("draining") != ["w-b"]:
            assert time.monotonic() < deadline, str(read_desired(beat.client))
            time.sleep(0.1)
        assert registry.hot_workers("hand-m") == ["w-a"]
        # w-a asks to leave instead: it goes first, and its model is placed on w-b before it goes.
        leaving, staying = "w-a", "w-b"
        assert hand_over(registry, leaving, timeout_s=60, poll_s=0.2) == []
        assert staying in registry.hot_workers("hand-m")
        # One small model wants one worker: the leaving one is let go, and the signal is not held.
        deadline = time.monotonic() + 30
        while not ((d := read_desired(beat.client)) and d["workers"] == 1 and d["draining"] == [leaving] and not d["held"]):
            assert time.monotonic() < deadline, str(read_desired(beat.client))
            time.sleep(0.2)
    finally:
        stop.set()
        ticker.join(10)


def test_a_redis_that_fails_keeps_the_last_good_decision(settings) -> None:
    from prometheus_client import CollectorRegistry, Gauge

    from warmstart.infra.services import free_port
    from warmstart.infra.tiers import Tier
    from warmstart.scheduler.beat import ClusterView
    from warmstart.scheduler.planner import ModelDemand, WorkerState
    from warmstart.scheduler.scale_signal import ScaleSignal

    registry = CollectorRegistry()
    gauge = Gauge("warmstart_desired_workers", "desired", ("pool",), registry=registry)
    client = connect(settings.redis_url)
    signal = ScaleSignal(settings, client, TrafficRecorder(client, settings.traffic_retention_min, settings.traffic_minute_s), gauge)
    view = ClusterView([WorkerState("w1", 2**30, 2**30, 2**30, {"m": "HOT"})], [], {"w1": {}})
    now_min = int(time.time() // settings.traffic_minute_s)
    good = signal.update(view, {"m": 1000}, [ModelDemand("m", Tier.HOT)], {}, now_min)
    assert good is not None and good.workers == 1 and read_desired(client)["workers"] == 1

    dead = connect(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)  # nothing listens there
    signal.client, signal.traffic = dead, TrafficRecorder(dead, settings.traffic_retention_min, settings.traffic_minute_s)
    assert signal.update(view, {"m": 1000}, [ModelDemand("m", Tier.HOT)], {}, now_min) is None
    assert signal.last is good
    assert registry.get_sample_value("warmstart_desired_workers", {"pool": "default"}) == 1
