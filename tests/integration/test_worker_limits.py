"""Hardening end to end (real redis-server, real worker processes): task arguments, message
sizes and nesting, result expiry, and serving HOT models while the snapshot store is down."""

from __future__ import annotations

import base64
import sys

import pytest
import redis
import torch

from warmstart.infra.errors import PayloadTooLargeError, SettingsError, ServiceError
from warmstart.infra.services import EmbeddedRedis, apply_test_credentials, free_port
from warmstart.infra.settings import MiB, load_settings
from warmstart.workers.client import Client
from warmstart.workers.registry import WorkerRegistry
from warmstart.infra.redis_client import connect
from tests.helpers import wait_for
from tests.integration.test_workers import expected

pytestmark = pytest.mark.integration


def send(client: Client, queue_model: str, *args: object, **kwargs: object) -> dict:
    """A raw Celery request to ``infer.<queue_model>`` (as any client may send), its answer
    read and deleted."""
    result = client.app.send_task("warmstart.infer", args=args, kwargs=kwargs, queue=f"infer.{queue_model}")
    try:
        return result.get(timeout=30)
    finally:
        result.forget()


def serving(settings, start_worker, publish, model: str, **overrides: object) -> tuple[Client, torch.nn.Module]:  # noqa: ANN001
    """A worker serving ``model`` (HOT), and a client."""
    module = publish(model)
    start_worker("w-limits", profile="prod", eager_models=[model], **overrides)
    wait_for(lambda: WorkerRegistry(connect(settings.redis_url)).hot_workers(model), timeout_s=60)
    return Client(settings), module


def still_serves(client: Client, module: torch.nn.Module, model: str) -> None:
    x = torch.randn(2, 8)
    torch.testing.assert_close(client.infer(model, {"x": x}, timeout_s=30)["output"], expected(module, x))


def test_missing_unknown_and_positional_arguments_are_answered(settings, publish, start_worker) -> None:
    client, module = serving(settings, start_worker, publish, "args-model")
    missing = send(client, "args-model", model="args-model")
    assert missing["ok"] is False and missing["error"]["type"] == "InvalidInputError"
    assert "'inputs'" in missing["error"]["message"] and "(model, inputs)" in missing["error"]["message"]
    x = torch.randn(1, 8)
    extra = send(client, "args-model", model="args-model", inputs={"x": x.tolist()}, priority=1)
    assert extra["error"]["type"] == "InvalidInputError" and "'priority'" in extra["error"]["message"]
    positional = send(client, "args-model", "args-model", {"x": x.tolist()})
    assert positional["ok"], positional
    prewarm = client.app.send_task("warmstart.prewarm", kwargs={"model": "args-model", "colour": "red"},
                                   queue="warmstart.worker.w-limits").get(timeout=30)  # fmt: skip
    assert prewarm["error"]["type"] == "InvalidInputError" and "'colour'" in prewarm["error"]["message"]
    still_serves(client, module, "args-model")


def test_a_message_over_the_limit_is_answered_not_decoded(settings, publish, start_worker) -> None:
    client, module = serving(settings, start_worker, publish, "big-model", max_message_bytes=1 * MiB)
    # A valid request under the payload limit (8 MiB) but over the worker's message limit.
    rows = (3 * MiB // 2) // 32
    big = {"x": {"dtype": "float32", "shape": [rows, 8], "data": base64.b64encode(bytes(rows * 32)).decode()}}
    answer = send(client, "big-model", model="big-model", inputs=big)
    assert answer["ok"] is False and answer["error"]["type"] == "PayloadTooLargeError", answer
    assert "'big-model'" in answer["error"]["message"] and "WARMSTART_MAX_MESSAGE_BYTES" in answer["error"]["message"]
    still_serves(client, module, "big-model")


def test_json_nested_too_deeply_is_answered_not_dropped(settings, publish, start_worker) -> None:
    client, module = serving(settings, start_worker, publish, "deep-model")
    deep: object = 0.0
    for _ in range(5000):
        deep = [deep]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # so that this process can encode what the worker cannot decode
    try:
        answer = send(client, "deep-model", model="deep-model", inputs={"x": deep})
    finally:
        sys.setrecursionlimit(limit)
    assert answer["error"]["type"] == "InvalidInputError" and "nested too deeply" in answer["error"]["message"]
    still_serves(client, module, "deep-model")


def test_the_client_refuses_an_oversized_request_before_sending_it(redis_url, worker_settings, publish) -> None:
    publish("too-big")
    client = Client(load_settings(**worker_settings, max_message_bytes=1 * MiB))
    with pytest.raises(PayloadTooLargeError, match="WARMSTART_MAX_MESSAGE_BYTES"):
        client.submit("too-big", {"x": [[0.123456789] * 8 for _ in range(20_000)]})
    assert redis.Redis.from_url(redis_url).llen("infer.too-big") == 0


def test_answers_are_deleted_once_read_and_unread_ones_expire(settings, publish, start_worker) -> None:
    client, _ = serving(settings, start_worker, publish, "ttl-model", result_ttl_s=60)
    r = redis.Redis.from_url(settings.redis_url)
    pending = client.submit("ttl-model", {"x": torch.randn(1, 8)})
    pending.get(timeout_s=30)
    assert not r.exists(f"celery-task-meta-{pending.id}")
    assert pending.get()["output"].shape[0] == 1  # still readable from the client

    unread = client.app.send_task("warmstart.infer", kwargs={"model": "ttl-model", "inputs": {"x": [[0.0] * 8]}},
                                  queue="infer.ttl-model")  # fmt: skip
    key = f"celery-task-meta-{unread.id}"
    wait_for(lambda: r.exists(key), timeout_s=30)
    assert 0 < r.ttl(key) <= 60


def test_hot_models_are_served_while_the_store_is_down(worker_settings, settings, publish, start_worker) -> None:
    module = publish("hot-model")
    lazy_module = publish("lazy-model")
    start_worker("w-outage", profile="prod", eager_models=["hot-model"])
    wait_for(lambda: WorkerRegistry(connect(settings.redis_url)).hot_workers("hot-model"), timeout_s=60)
    # The clients' store is an S3 endpoint where nothing listens: an outage.
    apply_test_credentials()
    dead_store = {"store_url": "s3://warmstart/models", "s3_endpoint_url": f"http://127.0.0.1:{free_port()}"}
    client = Client(load_settings(**{**worker_settings, **dead_store}))
    x = torch.randn(2, 8)
    torch.testing.assert_close(client.infer("hot-model", {"x": x}, timeout_s=30)["output"], expected(module, x))
    # A model no worker serves yet is sent anyway: the worker (which can reach its store) takes it.
    torch.testing.assert_close(client.infer("lazy-model", {"x": x}, timeout_s=60)["output"], expected(lazy_module, x))


def test_the_embedded_redis_bounds_messages(monkeypatch) -> None:
    with EmbeddedRedis(max_message_bytes=1 * MiB) as server:
        r = redis.Redis.from_url(server.url)
        r.lpush("q", b"x" * MiB)
        # Redis answers "invalid bulk length" and closes the connection; a client still
        # sending the rest may see the reset first. Either way nothing more is stored.
        with pytest.raises((redis.ResponseError, redis.ConnectionError)):
            r.lpush("q", b"x" * (MiB + 1))
        assert redis.Redis.from_url(server.url).llen("q") == 1
    monkeypatch.setenv("WARMSTART_MAX_MESSAGE_BYTES", str(2 * MiB))
    with EmbeddedRedis() as server:
        assert redis.Redis.from_url(server.url).config_get("proto-max-bulk-len")["proto-max-bulk-len"] == str(2 * MiB)
    with pytest.raises(ServiceError, match="1048576"):
        EmbeddedRedis(max_message_bytes=MiB - 1)
    with pytest.raises(SettingsError, match="WARMSTART_MAX_MESSAGE_BYTES"):
        load_settings(max_message_bytes=MiB - 1)
