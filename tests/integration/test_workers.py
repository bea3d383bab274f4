"""Workers end to end: real redis-server, real worker processes, a local snapshot store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from warmstart.infra.celery_app import TASK_DEMOTE, control_queue
from warmstart.infra.errors import InvalidInputError, NonFiniteOutputError, PayloadTooLargeError, UnknownModelError
from warmstart.infra.redis_client import connect
from warmstart.workers.client import Client
from warmstart.workers.registry import WorkerRegistry
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def expected(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return module(x)


def test_eager_model_is_hot_before_it_takes_a_request(settings, publish, start_worker) -> None:
    module = publish("eager-one")
    client = Client(settings)
    xs = [torch.randn(1, 8) for _ in range(10)]
    # Queued before any worker exists: the worker must not take them before the model is HOT.
    pending = [client.submit("eager-one", {"x": x}) for x in xs]
    start_worker("w-eager", profile="prod", eager_models=["eager-one"])
    answers = [p.raw(timeout_s=60) for p in pending]

    state = WorkerRegistry(connect(settings.redis_url)).models_of("w-eager")["eager-one"]
    assert state["tier"] == "HOT" and state["health"] == "ok"
    assert state["gate_opened_at"] >= state["hot_at"]
    for x, answer in zip(xs, answers):
        assert answer["worker"] == "w-eager"
        assert answer["started_at"] >= state["hot_at"]
        out = client_outputs(answer)
        torch.testing.assert_close(out, expected(module, x))


def client_outputs(answer: dict) -> torch.Tensor:
    from warmstart.workers.wire import decode_outputs

    return decode_outputs(answer["outputs"])["output"]


def test_lazy_model_scales_from_zero_and_loses_no_request(settings, publish, start_worker) -> None:
    module = publish("lazy-one")
    start_worker("w-lazy")  # dev profile: holds nothing until asked
    registry = WorkerRegistry(connect(settings.redis_url))
    assert registry.hot_workers("lazy-one") == []
    client = Client(settings)
    xs = [torch.full((1, 8), float(i)) for i in range(200)]
    pending = [client.submit("lazy-one", {"x": x}) for x in xs]
    for x, p in zip(xs, pending):
        torch.testing.assert_close(p.get(timeout_s=120)["output"], expected(module, x))
    assert registry.hot_workers("lazy-one") == ["w-lazy"]


def test_health_gate_keeps_failing_model_off_and_rejoins(settings, publish, start_worker, tmp_path: Path) -> None:
    flag = tmp_path / "flaky.flag"
    module = publish("flaky-one", flaky_flag=flag)
    registry = WorkerRegistry(connect(settings.redis_url))
    client = Client(settings)

    # 1. Failing from the start: the model never takes traffic.
    flag.write_text("offset")
    start_worker("w-flaky", profile="prod", eager_models=["flaky-one"])
    wait_for(lambda: registry.models_of("w-flaky").get("flaky-one", {}).get("health") == "failing")
    x = torch.randn(1, 8)
    waiting = client.submit("flaky-one", {"x": x})
    time.sleep(2.0)  # several health ticks
    assert not waiting.result.ready(), "a model failing its golden check answered a request"
    assert registry.hot_workers("flaky-one") == []

    # 2. It recovers: it rejoins and the waiting request is answered correctly.
    flag.unlink()
    torch.testing.assert_close(waiting.get(timeout_s=60)["output"], expected(module, x))
    assert registry.hot_workers("flaky-one") == ["w-flaky"]

    # 3. It starts failing while HOT: it leaves its queue within a health tick.
    flag.write_text("nan")
    wait_for(lambda: registry.hot_workers("flaky-one") == [], timeout_s=10)
    state = registry.models_of("w-flaky")["flaky-one"]
    assert state["health"] == "failing" and not state["consuming"]

    # 4. And rejoins once it recovers.
    flag.unlink()
    wait_for(lambda: registry.hot_workers("flaky-one") == ["w-flaky"], timeout_s=30)
    torch.testing.assert_close(client.infer("flaky-one", {"x": x}, timeout_s=30)["output"], expected(module, x))


def test_sigkilled_worker_loses_no_request(settings, publish, start_worker) -> None:
    module = publish("slow-one", delay_s=0.05)
    first = start_worker("w-doomed", profile="prod", eager_models=["slow-one"], concurrency=2)
    start_worker("w-survivor", profile="prod", eager_models=["slow-one"], concurrency=2)
    registry = WorkerRegistry(connect(settings.redis_url))
    wait_for(lambda: sorted(registry.hot_workers("slow-one")) == ["w-doomed", "w-survivor"], timeout_s=60)

    client = Client(settings)
    xs = [torch.full((1, 8), float(i)) for i in range(60)]
    pending = [client.submit("slow-one", {"x": x}) for x in xs]
    # Kill one worker in the middle of the stream: requests it had taken are unacknowledged.
    wait_for(lambda: sum(p.result.ready() for p in pending) >= 10, timeout_s=60, interval_s=0.01)
    first.kill()
    answers = [p.raw(timeout_s=120) for p in pending]
    for x, answer in zip(xs, answers):
        torch.testing.assert_close(client_outputs(answer), expected(module, x))
    assert {a["worker"] for a in answers[-10:]} == {"w-survivor"}


def test_bad_inputs_get_typed_errors_and_the_worker_keeps_serving(settings, publish, start_worker, tmp_path: Path) -> None:
    module = publish("good-one")
    flag = tmp_path / "nan.flag"
    publish("nan-one", flaky_flag=flag)
    start_worker("w-strict", profile="prod", eager_models=["good-one", "nan-one"], max_payload_bytes=4096)
    client = Client(settings)
    registry = WorkerRegistry(connect(settings.redis_url))
    wait_for(lambda: registry.hot_workers("nan-one") == ["w-strict"], timeout_s=60)

    with pytest.raises(UnknownModelError):
        client.submit("no-such-model", {"x": torch.randn(1, 8)})
    with pytest.raises(InvalidInputError, match="float32"):
        client.infer("good-one", {"x": torch.ones(1, 8, dtype=torch.int64)}, timeout_s=30)
    with pytest.raises(InvalidInputError, match="dimension 1"):
        client.infer("good-one", {"x": torch.randn(1, 9)}, timeout_s=30)
    with pytest.raises(InvalidInputError, match="missing"):
        client.infer("good-one", {"y": torch.randn(1, 8)}, timeout_s=30)
    with pytest.raises(InvalidInputError, match="base64"):
        client.submit("good-one", {"x": {"dtype": "float32", "shape": [1, 8], "data": "%%%"}}).get(timeout_s=30)
    with pytest.raises(PayloadTooLargeError):
        client.infer("good-one", {"x": torch.randn(200, 8)}, timeout_s=30)
    flag.write_text("nan")
    with pytest.raises(NonFiniteOutputError):
        client.infer("nan-one", {"x": torch.randn(1, 8)}, timeout_s=30)

    # A raw Celery client sending malformed payloads gets typed errors too, not a dead worker.
    raw = client.app.send_task("warmstart.infer", kwargs={"model": "good-one", "inputs": "not an object"}, queue="infer.good-one")
    assert raw.get(timeout=30)["error"]["type"] == "InvalidInputError"
    raw = client.app.send_task("warmstart.infer", kwargs={"model": "../etc", "inputs": {}}, queue="infer.good-one")
    assert raw.get(timeout=30)["error"]["type"] == "InvalidNameError"

    x = torch.randn(3, 8)
    torch.testing.assert_close(client.infer("good-one", {"x": x}, timeout_s=30)["output"], expected(module, x))
    import asyncio

    async_out = asyncio.run(client.infer_async("good-one", {"x": x}, timeout_s=30))["output"]
    torch.testing.assert_close(async_out, expected(module, x))
    lists = client.infer("good-one", {"x": x.tolist()}, timeout_s=30)["output"]
    torch.testing.assert_close(lists, expected(module, x))

    # A demotion decided on a colder view (the beat saw the model at HOST; a request has made
    # it HOT since) leaves it serving; one decided on what it is applies; a bad view is a
    # typed error.
    def demote(**kwargs: object) -> dict:
        return client.app.send_task(TASK_DEMOTE, kwargs={"model": "good-one", **kwargs},
                                    queue=control_queue("w-strict")).get(timeout=30)  # fmt: skip

    assert demote(tier="REMOTE", seen="HOST")["tier"] == "HOT"
    assert registry.hot_workers("good-one") == ["w-strict"]
    assert demote(tier="HOST", seen="lukewarm")["error"]["type"] == "InvalidInputError"
    assert demote(tier="HOST", seen="HOT")["tier"] == "HOST"
    assert registry.hot_workers("good-one") == []


def test_budgets_demote_the_least_recently_used_and_every_request_is_answered(settings, publish, start_worker) -> None:
    from warmstart.snapshot.catalog import read_manifest
    from warmstart.snapshot.stores import open_store_url

    modules = {name: publish(name) for name in ("m-a", "m-b", "m-c")}
    size = read_manifest(open_store_url(settings.store_url), "m-a", "v1").weights.size_bytes
    # Room for two models on the device and in host memory, not three.
    start_worker("w-tight", device_budget_bytes=int(2.5 * size), host_budget_bytes=int(2.5 * size))
    registry = WorkerRegistry(connect(settings.redis_url))
    client = Client(settings)
    x = torch.randn(1, 8)

    def serve(*names: str) -> set[str]:
        for name in names:
            torch.testing.assert_close(client.infer(name, {"x": x}, timeout_s=60)["output"], expected(modules[name], x))
        states = registry.models_of("w-tight")
        assert sum(s["size_bytes"] for s in states.values() if s["tier"] in ("HOT", "DEVICE")) <= 2.5 * size
        return {m for m, s in states.items() if s["tier"] in ("HOT", "DEVICE")}

    # When m-c needs room, m-b is the least recently used: it is demoted, not m-a.
    assert serve("m-a", "m-b", "m-a", "m-c") == {"m-a", "m-c"}
    # When m-b comes back, m-a is now the least recently used.
    assert serve("m-b") == {"m-b", "m-c"}
    state = registry.models_of("w-tight")["m-a"]
    assert state["tier"] in ("HOST", "DISK") and not state["consuming"]


def test_a_request_that_kills_every_worker_is_given_up_after_max_deliveries(settings, publish, start_worker) -> None:
    from warmstart.infra.errors import RequestCrashedWorkersError

    module = publish("fragile", crash_on=666.0)
    registry = WorkerRegistry(connect(settings.redis_url))
    client = Client(settings)
    common = {"profile": "prod", "eager_models": ["fragile"], "max_deliveries": 2}
    first = start_worker("w-crash-1", **common)
    wait_for(lambda: registry.hot_workers("fragile"), timeout_s=60)
    poison = client.submit("fragile", {"x": torch.full((1, 8), 666.0)})
    wait_for(lambda: not first.alive(), timeout_s=30)  # the first delivery killed it

    # Not waited for: the redelivered request may kill it before its first heartbeat is seen.
    second = start_worker("w-crash-2", wait=False, **common)
    wait_for(lambda: not second.alive(), timeout_s=60)  # the second delivery killed it too

    start_worker("w-crash-3", **common)  # the third is refused instead of run
    with pytest.raises(RequestCrashedWorkersError, match="delivered 3 times"):
        poison.get(timeout_s=60)
    x = torch.randn(1, 8)
    torch.testing.assert_close(client.infer("fragile", {"x": x}, timeout_s=60)["output"], expected(module, x))
