"""A request the broker lost is sent again by the client: at-least-once end to end."""

from __future__ import annotations

import time

import pytest
import redis
import torch

from warmstart.infra.settings import load_settings
from warmstart.workers.client import Client
from warmstart.workers.delivery import RequestTracker

pytestmark = pytest.mark.integration


def test_a_request_lost_between_the_queue_and_a_worker_is_sent_again(worker_settings, publish, start_worker) -> None:
    module = publish("lost-one")
    settings = load_settings(**{**worker_settings, "request_check_s": 0.5})
    client = Client(settings)
    x = torch.rand(1, 8)
    pending = client.submit("lost-one", {"x": x})  # no worker yet: it waits in its queue
    broker = redis.Redis.from_url(settings.redis_url)
    # What kombu does when a worker that popped the message dies before recording it as
    # unacknowledged: the message is gone from the queue and recorded nowhere.
    assert broker.rpop("infer.lost-one") is not None
    assert RequestTracker(client.registry.client).locate(pending.id, "infer.lost-one") == "missing"
    start_worker("w-late")
    out = pending.get(timeout_s=60)["output"]
    with torch.inference_mode():
        torch.testing.assert_close(out, module(x))
    assert pending.resends == 1


def test_the_tracker_finds_queued_and_answered_requests(worker_settings, publish, start_worker) -> None:
    publish("found-one")
    settings = load_settings(**worker_settings)
    client = Client(settings)
    tracker = RequestTracker(client.registry.client)
    pending = client.submit("found-one", {"x": torch.rand(1, 8)})
    assert tracker.locate(pending.id, "infer.found-one") == "queued"
    start_worker("w-found")
    pending.raw(timeout_s=60)
    # Read, so forgotten; the worker acknowledges just after storing the answer, so it may
    # show as running for a moment first.
    deadline = time.monotonic() + 10
    while tracker.locate(pending.id, "infer.found-one") == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tracker.locate(pending.id, "infer.found-one") == "missing"
