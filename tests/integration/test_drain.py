"""Drain hand-over: a worker stopped with SIGTERM under load first hands its HOT model to
another worker, serving all the while, and only then stops: the model is never without a
HOT worker and no request fails or is lost. Draining an unknown worker is a typed error."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from warmstart.infra.errors import UnknownWorkerError
from warmstart.infra.redis_client import connect
from warmstart.infra.settings import load_settings
from warmstart.processes import ChildProcess, settings_env
from warmstart.workers.client import Client
from warmstart.workers.handover import LEAVING, hand_over
from warmstart.workers.registry import WorkerRegistry
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def test_sigterm_hands_the_hot_model_over_before_the_worker_stops(worker_settings, publish, start_worker) -> None:
    # fixed-30: the model stays HOT for 30 minutes after a request, so only the drain moves it
    # (the default policy may demote a model with one minute of history at any tick).
    values = {**worker_settings, "profile": "prod", "plan_interval_s": 0.3, "scale_min_workers": 2, "policy": "fixed-30"}
    settings = load_settings(**values)
    module = publish("dm")
    workers = {name: start_worker(name, profile="prod") for name in ("w-d1", "w-d2")}
    # INFO: the beat logs what each tick sent, which the failure message shows.
    beat = ChildProcess(["beat", "--loglevel", "INFO"], values).start()
    client = Client(settings)
    registry = WorkerRegistry(connect(settings.redis_url))
    stop_load = threading.Event()
    answers: list[bool] = []
    errors: list[str] = []
    x = torch.randn(2, 8)

    def load() -> None:
        while not stop_load.is_set():
            try:
                out = client.infer("dm", {"x": x}, timeout_s=60)["output"]
                with torch.inference_mode():
                    answers.append(bool(torch.allclose(out, module(x), atol=1e-6)))
            except Exception as e:  # counted, asserted below
                errors.append(f"{type(e).__name__}: {e}")
            time.sleep(0.02)

    try:
        wait_for(registry.planner_alive, timeout_s=60, what="the beat plans")
        client.infer("dm", {"x": x}, timeout_s=60)  # a lazy warm-up: one worker has it HOT
        holder = wait_for(lambda: registry.hot_workers("dm"), timeout_s=30)[0]
        other = next(n for n in workers if n != holder)
        assert other not in registry.hot_workers("dm")
        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(0.5)

        stopping = threading.Thread(target=workers[holder].stop, kwargs={"timeout_s": 60})
        stopping.start()
        samples = []
        while stopping.is_alive():
            samples.append(registry.hot_workers("dm"))
            time.sleep(0.05)
        stop_load.set()
        thread.join(timeout=120)

        assert workers[holder].process.poll() is not None  # it did stop
        assert [] not in samples, (f"the model was HOT nowhere while its worker stopped: {samples[:6]}\n"
                                   f"--- {holder}:\n{workers[holder].output()[-3000:]}\n--- beat:\n{beat.output()[-3000:]}")
        assert any(other in s for s in samples)  # handed over before the holder left
        assert registry.hot_workers("dm") == [other]
        assert errors == [] and len(answers) > 10 and all(answers)
        assert not registry.client.sismember(LEAVING, holder)  # the beat forgot it once gone
    finally:
        stop_load.set()
        client.close()
        client.app.close()
        beat.close()


def test_draining_an_unknown_worker_is_a_typed_error(worker_settings) -> None:
    settings = load_settings(**worker_settings)
    client = connect(settings.redis_url)
    with pytest.raises(UnknownWorkerError, match="nobody"):
        hand_over(WorkerRegistry(client), "nobody", timeout_s=1)
    assert not client.exists(LEAVING)  # nothing was marked
    env = {**os.environ, **settings_env(worker_settings)}
    done = subprocess.run([sys.executable, "-m", "warmstart.cli", "drain", "--name", "nobody"],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "UnknownWorkerError" in done.stderr and "warmstart status" in done.stderr
