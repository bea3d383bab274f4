"""Arrivals seen at the broker: a plain Celery client (no warmstart import) is counted,
woken up and answered, and a request for a model nobody published is answered too."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest

from warmstart.infra.celery_app import create_app
from warmstart.infra.redis_client import connect, key
from warmstart.infra.settings import load_settings
from warmstart.processes import ChildProcess
from warmstart.scheduler.queue_watch import QueueWatcher
from warmstart.scheduler.traffic import TrafficRecorder
from warmstart.snapshot.stores import open_store
from warmstart.workers.registry import WorkerRegistry
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

#: A client that knows only Celery and the documented wire protocol.
RAW_CLIENT = """
import json, sys
from celery import Celery
url, model = sys.argv[1], sys.argv[2]
app = Celery(broker=url, backend=url)
result = app.send_task("warmstart.infer", kwargs={"model": model, "inputs": {"x": [[0.5] * 8] * 2}},
                       queue="infer." + model)
answer = result.get(timeout=60)
result.forget()
print(json.dumps({"answer": answer, "imported": sorted(m for m in sys.modules if m.startswith("warmstart"))}))
"""


def raw_request(redis_url: str, model: str, cwd) -> dict:  # noqa: ANN001
    done = subprocess.run([sys.executable, "-c", RAW_CLIENT, redis_url, model], cwd=cwd,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["imported"] == []
    return out["answer"]


def test_a_plain_celery_client_is_counted_answered_and_its_model_kept(worker_settings, publish, start_worker, tmp_path) -> None:
    values = {**worker_settings, "profile": "prod", "policy": "warmstart", "traffic_minute_s": 1.0,
              "plan_interval_s": 0.3, "keep_warm_interval_s": 5.0}
    settings = load_settings(**values)
    publish("raw-model")
    start_worker("w-raw", profile="prod", traffic_minute_s=1.0)
    beat = ChildProcess(["beat", "--loglevel", "WARNING"], values).start()
    try:
        registry = WorkerRegistry(connect(settings.redis_url))
        wait_for(lambda: connect(settings.redis_url).get(key("beat", "leader")), timeout_s=30)
        time.sleep(0.5)  # the watcher starts after the first tick
        answer = raw_request(settings.redis_url, "raw-model", tmp_path)
        assert answer["ok"] is True and "output" in answer["outputs"]

        # The request is in the model's traffic: the beat recorded it from the queue.
        traffic = TrafficRecorder(connect(settings.redis_url), minute_s=1.0)
        last = wait_for(lambda: traffic.last_arrival_minute("raw-model"), timeout_s=10)
        assert sum(traffic.minute_counts("raw-model", last - 5, last + 1).values()) == 1

        # Its policy sees the arrival (once its minute is complete) and keeps the model HOT
        # (warmstart's first-gap hold: B = 240 minutes, here 240 s).
        def policy_saw_it() -> bool:
            raw = connect(settings.redis_url).get(key("policy", "warmstart", "raw-model"))
            return bool(raw) and json.loads(raw)["state"].get("last_arrival_min") == last

        wait_for(policy_saw_it, timeout_s=20)
        time.sleep(2.0)  # a few more ticks and minutes
        stored = json.loads(connect(settings.redis_url).get(key("policy", "warmstart", "raw-model")))
        assert stored["decision"]["tier"] == "HOT"
        assert registry.hot_workers("raw-model") == ["w-raw"]

        # A model nobody published is answered, not left in its queue.
        refused = raw_request(settings.redis_url, "nobody-published-this", tmp_path)
        assert refused["ok"] is False and refused["error"]["type"] == "UnknownModelError"
        assert registry.queued_requests("nobody-published-this") == 0
    finally:
        beat.close()


def test_without_keyspace_notifications_the_queues_are_polled(settings, publish, caplog) -> None:
    publish("polled")
    client = connect(settings.redis_url)
    flags = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    client.config_set("notify-keyspace-events", "")
    try:
        app = create_app(settings)
        registry = WorkerRegistry(client)
        watcher = QueueWatcher(client, app, registry, TrafficRecorder(client), open_store(settings),
                               claim_s=30, poll_s=0.1)
        with caplog.at_level(logging.WARNING):
            assert watcher.detect_mode() == "polling"
        assert "notify-keyspace-events Kl" in caplog.text
        watcher.set_catalog(["polled"], current=True)
        watcher.poll_once()  # nothing queued yet
        for _ in range(3):
            app.send_task("warmstart.infer", kwargs={"model": "polled", "inputs": {}}, queue="infer.polled")
        app.send_task("warmstart.infer", kwargs={"model": "ghost", "inputs": {}}, queue="infer.ghost")
        watcher.poll_once()
        watcher.flush()
        traffic = TrafficRecorder(client)
        minute = traffic.last_arrival_minute("polled")
        assert minute is not None and traffic.minute_counts("polled", minute, minute + 1) == {minute: 3}
        assert client.get(key("prewarm-claim", "polled"))  # a lazy pre-warm was sent
        assert watcher.refuse_unpublished() == 1 and registry.queued_requests("ghost") == 0
    finally:
        client.config_set("notify-keyspace-events", flags)
