"""Replicas: an eager model in prod is HOT on two workers; killing one of them leaves the
other serving with no gap, and the beat places the lost copy on a third worker."""

from __future__ import annotations

import time

import pytest
import torch

from warmstart.infra.redis_client import connect
from warmstart.infra.settings import load_settings
from warmstart.processes import ChildProcess
from warmstart.workers.client import Client
from warmstart.workers.registry import WorkerRegistry
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def test_killing_a_worker_of_a_replicated_eager_model_leaves_no_gap(worker_settings, publish, start_worker) -> None:
    # scale_min_workers: the scaling signal must not drain one of the three workers here.
    values = {**worker_settings, "profile": "prod", "eager_models": ["replicated"], "plan_interval_s": 0.3,
              "keep_warm_interval_s": 5.0, "scale_min_workers": 3}
    settings = load_settings(**values)
    publish("replicated")
    workers = {name: start_worker(name, profile="prod", eager_models=["replicated"]) for name in ("w-r1", "w-r2")}
    beat = ChildProcess(["beat", "--loglevel", "WARNING"], values).start()
    client = Client(settings)
    try:
        registry = WorkerRegistry(connect(settings.redis_url))
        wait_for(lambda: len(registry.hot_workers("replicated")) == 2, timeout_s=60)
        third = start_worker("w-r3", profile="prod")  # holds nothing eager of its own
        time.sleep(1.0)  # a few ticks: the beat keeps both copies, adds none on the third
        assert registry.hot_workers("replicated") == ["w-r1", "w-r2"]
        x = torch.randn(2, 8)
        client.infer("replicated", {"x": x}, timeout_s=30)

        workers["w-r1"].kill()  # between two requests: none is in flight on it
        waits = []
        deadline = time.monotonic() + 8.0  # past its heartbeat's expiry (3 s) and the re-plan
        while time.monotonic() < deadline:
            started = time.monotonic()
            client.infer("replicated", {"x": x}, timeout_s=30)
            waits.append(time.monotonic() - started)
        assert len(waits) > 10 and max(waits) < 1.0, max(waits)
        # The lost copy is placed on the third worker once the first is declared dead.
        wait_for(lambda: registry.hot_workers("replicated") == ["w-r2", third.name], timeout_s=30)
    finally:
        client.close()
        client.app.close()
        beat.close()
