"""`warmstart alias`: moving `live` to a new version on workers serving under load. Every
serving worker loads the new version beside the old, checks it, and switches without closing
its queue: every request is answered, by the old version and then the new, and the model is
never without a HOT worker. A version that cannot be made ready leaves everything as it was."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from warmstart.infra.celery_app import TASK_PREWARM, control_queue
from warmstart.infra.errors import RolloutError, SnapshotNotFoundError
from warmstart.infra.redis_client import connect
from warmstart.infra.settings import load_settings
from warmstart.scheduler.alias import AliasMover
from warmstart.snapshot.catalog import get_alias
from warmstart.snapshot.stores import open_store
from warmstart.processes import settings_env
from warmstart.workers.client import Client
from warmstart.workers.registry import WorkerRegistry
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def test_moving_live_switches_every_serving_worker_with_no_request_lost_or_cold(
        worker_settings, publish, start_worker, tmp_path) -> None:  # fmt: skip
    settings = load_settings(**worker_settings)
    flag = tmp_path / "v3.flag"
    modules = {"v1": publish("am", seed=1), "v2": publish("am", version="v2", seed=2)}
    publish("am", version="v3", flaky_flag=flag)
    flag.write_text("offset")  # v3 now fails its golden check: it must never take traffic
    for name in ("w-a1", "w-a2"):
        start_worker(name)
    client = Client(settings)
    mover = AliasMover(settings, client.app)
    registry = WorkerRegistry(connect(settings.redis_url))
    for name in ("w-a1", "w-a2"):  # both serve it
        client.app.send_task(TASK_PREWARM, kwargs={"model": "am", "tier": "HOT"}, queue=control_queue(name)).get(timeout=60)
    assert registry.hot_workers("am") == ["w-a1", "w-a2"]

    x = torch.randn(2, 8)
    with torch.inference_mode():
        expected = {v: m(x) for v, m in modules.items()}
    stop = threading.Event()
    seen: list[list[object]] = [[], []]

    def load(mine: list[object]) -> None:
        while not stop.is_set():
            try:
                pending = client.submit("am", {"x": x}, timeout_s=60)
                version = pending.raw()["version"]  # answers name the version that produced them
                mine.append((version, bool(torch.allclose(pending.get()["output"], expected[version], atol=1e-6))))
            except Exception as e:  # judged below
                mine.append(e)

    threads = [threading.Thread(target=load, args=(mine,)) for mine in seen]
    for t in threads:
        t.start()
    samples: list[list[str]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            samples.append(registry.hot_workers("am"))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        time.sleep(0.5)
        moved = mover.move("am", "live", "v2", timeout_s=120)
        counts = [len(mine) for mine in seen]
        wait_for(lambda: all(len(mine) >= n + 5 for mine, n in zip(seen, counts)), timeout_s=60)
    finally:
        stop.set()
        sampling.set()
        for t in threads + [sampler]:
            t.join(60)

    assert moved.previous == "v1" and set(moved.switched) == {"w-a1", "w-a2"}
    assert all(done["switched"] for done in moved.switched.values())
    for mine in seen:
        assert mine and all(isinstance(a, tuple) and a[1] for a in mine), [a for a in mine if not isinstance(a, tuple) or not a[1]][:3]
        versions = [a[0] for a in mine]  # type: ignore[index]
        first_new = versions.index("v2")
        assert first_new > 0 and set(versions[first_new:]) == {"v2"}  # old, then only new
    assert [] not in samples  # never without a HOT worker
    assert {registry.models_of(w)["am"]["version"] for w in ("w-a1", "w-a2")} == {"v2"}
    store = open_store(settings)
    assert get_alias(store, "am", "live") == "v2"

    # A version failing its golden check: refused, alias and workers untouched, nothing staged.
    with pytest.raises(RolloutError, match="w-a1.*HealthCheckError|HealthCheckError"):
        mover.move("am", "live", "v3", timeout_s=120)
    assert get_alias(store, "am", "live") == "v2"
    assert registry.hot_workers("am") == ["w-a1", "w-a2"]
    assert {registry.models_of(w)["am"]["version"] for w in ("w-a1", "w-a2")} == {"v2"}
    with pytest.raises(SnapshotNotFoundError, match="v1, v2, v3"):
        mover.move("am", "live", "v9")

    # The same from the command line: exit 2 and one line that names the cause.
    env = {**os.environ, **settings_env(worker_settings)}
    done = subprocess.run([sys.executable, "-m", "warmstart.cli", "alias", "am", "live", "v3"],
                          capture_output=True, text=True, env=env, timeout=180)  # fmt: skip
    assert done.returncode == 2 and "RolloutError" in done.stderr and "stays at 'v2'" in done.stderr
    client.close()
    client.app.close()
