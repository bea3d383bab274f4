"""The local scaler over real worker processes and a beat: it adds a worker ahead of a surge
the earlier days recorded (before any request of it), and drains it afterwards with every
request answered."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from warmstart.autoscale import LocalScaler
from warmstart.infra.settings import load_settings
from warmstart.scheduler.beat import BeatScheduler
from warmstart.scheduler.scale_signal import read_desired
from warmstart.scheduler.scaling import DAY_MIN
from warmstart.scheduler.traffic import TrafficRecorder
from warmstart.workers.client import Client
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def test_the_local_scaler_scales_up_ahead_of_a_surge_and_drains_with_nothing_lost(worker_settings, publish) -> None:
    publish("surge-m", delay_s=0.05)
    common = {**worker_settings, "profile": "prod", "eager_models": ["surge-m"]}
    settings = load_settings(**{**common, "worker_concurrency": 4, "scale_worker_start_s": 0,
                                "scale_min_workers": 1, "scale_max_workers": 3, "scale_drain": True})  # fmt: skip
    beat = BeatScheduler(settings)
    scaler = LocalScaler(settings.redis_url, 1, 3, common, prefix="as", drain_timeout_s=30)
    stop = threading.Event()
    ticker = threading.Thread(target=lambda: [beat.tick() or stop.wait(0.3) for _ in iter(stop.is_set, True)], daemon=True)
    scaling = threading.Thread(target=scaler.run, args=(0.3,), daemon=True)
    ticker.start()
    scaling.start()
    try:
        wait_for(lambda: beat.registry.hot_workers("surge-m") == ["as-1"], 90, 0.2, "the first worker is warm")
        # Two days ago this time of day, a surge came a minute later (within the lead time).
        traffic = TrafficRecorder(beat.client, settings.traffic_retention_min, settings.traffic_minute_s)
        traffic.record("surge-m", 6000, now_s=time.time() - 2 * DAY_MIN * settings.traffic_minute_s + settings.traffic_minute_s)
        wait_for(lambda: len(beat.registry.workers()[0]) == 2, 90, 0.2, "a second worker, ahead of the surge")
        assert read_desired(beat.client)["workers"] >= 2

        client = Client(settings)
        xs = [torch.randn(1, 8) for _ in range(40)]
        pending = [client.submit("surge-m", {"x": x}) for x in xs[:20]]
        # The surge is forgotten: the signal falls, and the scaler drains the second worker.
        for name in beat.client.scan_iter("ws:traffic:surge-m:*"):
            beat.client.delete(name)
        pending += [client.submit("surge-m", {"x": x}) for x in xs[20:]]
        wait_for(lambda: len(scaler.workers) == 1 and len(beat.registry.workers()[0]) == 1, 90, 0.2, "drained to one worker")
        answers = [p.get(timeout_s=60)["output"] for p in pending]
        assert len(answers) == 40
        assert [target for _, target, _ in scaler.history][-1] == 1
    finally:
        stop.set()
        scaler.stop()
        ticker.join(10)
        scaling.join(60)
