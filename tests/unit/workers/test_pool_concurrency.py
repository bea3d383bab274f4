"""The pool's rule for shared state, tested with threads against small budgets (no Redis, no
Celery: the in-memory gate and registry stand in)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from warmstart.infra.errors import BudgetError, WarmstartError
from warmstart.infra.tiers import Tier
from warmstart.snapshot.manifest import InputSpec
from warmstart.workers.stub import StubRegistry
from warmstart.workers.wire import decode_outputs, encode_tensor

from tests.models import FLAKY
from tests.unit.workers.conftest import PoolKit


class BudgetWatch(StubRegistry):
    """Records the most host and device bytes the worker ever published as held at once."""

    def __init__(self, sizes: dict[str, int]) -> None:
        super().__init__()
        self.sizes = sizes
        self.peak = {"HOST": 0, "DEVICE": 0}

    def put_model(self, worker: str, state: dict[str, Any]) -> None:
        super().put_model(worker, state)
        with self._lock:
            tiers = {m: Tier.parse(s["tier"]) for m, s in self.models[worker].items()}
        for level in (Tier.HOST, Tier.DEVICE):
            held = sum(self.sizes[m] for m, t in tiers.items() if t >= level)
            self.peak[level.name] = max(self.peak[level.name], held)


def _run_together(jobs: list[Any]) -> list[BaseException | None]:
    barrier = threading.Barrier(len(jobs))
    errors: list[BaseException | None] = [None] * len(jobs)

    def run(i: int) -> None:
        barrier.wait()
        try:
            jobs[i]()
        except BaseException as e:  # collected and judged by the test
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


@pytest.mark.parametrize("urgent", [False, True])
def test_concurrent_promotions_never_hold_more_than_the_host_budget(kit: PoolKit, urgent: bool) -> None:
    names = [f"m{i}" for i in range(4)]
    for name in names:
        kit.publish(name, inputs=(InputSpec("x", "float32", ("batch", 64)),), features=64, outputs=64)
    size = kit.store.size("snapshots/m0/v1/model.safetensors") or 0
    sizes = {n: size for n in names}
    kit.registry = BudgetWatch(sizes)
    pool = kit.make_pool(host_budget_bytes=int(size * 1.5), device_budget_bytes=int(size * 1.5),
                         room_wait_s=30)
    for _ in range(5):
        errors = _run_together([lambda n=n: pool.ensure(n, Tier.HOST, urgent=urgent) for n in names])
        if urgent:  # requests wait: each waits for the others' promotions, then demotes the idle one
            assert errors == [None] * len(names), errors
        assert all(e is None or isinstance(e, BudgetError) for e in errors), errors
        held = [s for s in pool.slots.values() if s.tier >= Tier.HOST]
        assert sum(s.size_bytes for s in held) <= int(size * 1.5)
        for n in names:
            pool.demote(n, Tier.DISK)
    assert kit.registry.peak["HOST"] <= int(size * 1.5)


def test_requests_survive_demotions_to_remote_and_reloads(kit: PoolKit) -> None:
    module = kit.publish("m")
    pool = kit.make_pool()
    x = torch.rand(2, 8)
    with torch.no_grad():
        expected = module(x)
    stop = threading.Event()
    answers: list[Any] = []

    def requests() -> None:
        for _ in range(20):
            try:
                answer = pool.infer("m", {"x": encode_tensor(x)})
                (out,) = decode_outputs(answer["outputs"]).values()
                answers.append(torch.allclose(out, expected, atol=1e-6))
            except WarmstartError as e:
                answers.append(e)

    def demoter() -> None:
        while not stop.wait(0.002):  # a demotion or reload every few milliseconds
            for tier in (Tier.REMOTE, Tier.HOST, Tier.DISK):
                try:
                    pool.demote("m", tier)
                except WarmstartError:
                    pass

    churn = threading.Thread(target=demoter)
    churn.start()
    errors = _run_together([requests, requests, requests])
    stop.set()
    churn.join(30)
    assert errors == [None, None, None]
    assert len(answers) == 60
    assert all(a is True for a in answers), [a for a in answers if a is not True][:5]


def test_demotion_waits_for_the_requests_in_flight(kit: PoolKit, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    kit.publish("m", factory="tests.models:build_flaky", flag_path=str(flag))
    pool = kit.make_pool()
    pool.ensure("m", Tier.HOT)
    order: list[str] = []
    flag.write_text("block")
    request = threading.Thread(target=lambda: (pool.infer("m", {"x": [[0.0] * 8]}), order.append("answered")))
    request.start()
    while pool.slots["m"].in_flight == 0:
        threading.Event().wait(0.005)
    demotion = threading.Thread(target=lambda: (pool.demote("m", Tier.DISK), order.append("demoted")))
    demotion.start()
    demotion.join(0.3)
    assert kit.gate.open_queues == set()  # the gate closed at once: no new requests come
    flag.unlink()
    request.join(30)
    demotion.join(30)
    assert order == ["answered", "demoted"]
    assert pool.slots["m"].tier == Tier.DISK


def test_a_hung_health_check_fails_at_its_deadline_and_stalls_no_other_model(kit: PoolKit, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    kit.publish("hangs", factory="tests.models:build_flaky", flag_path=str(flag))
    kit.publish("fine")
    pool = kit.make_pool(health_timeout_s=0.3)
    pool.ensure("hangs", Tier.HOT)
    pool.ensure("fine", Tier.HOT)
    flag.write_text("block")
    try:
        pool.health_tick()  # the old pool waited here for the hung forward, holding its lock
        hung = pool.slots["hangs"]
        assert hung.health == "failing" and "WARMSTART_HEALTH_TIMEOUT_S" in (hung.last_error or "")
        assert kit.gate.open_queues == {"fine"}
        assert pool.slots["fine"].health == "ok"
    finally:
        flag.unlink()


def test_a_failing_model_answers_its_cause_until_the_backoff_passes(kit: PoolKit, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    kit.publish("m", factory="tests.models:build_flaky", flag_path=str(flag))
    pool = kit.make_pool()
    pool.ensure("m", Tier.HOT)
    flag.write_text("offset")
    assert pool.check_health("m")["ok"] is False
    flag.unlink()  # healthy again, but the backoff has not passed: no re-warm on demand
    warmups = kit.gate.count("open", "m")
    with pytest.raises(WarmstartError, match="retried in"):
        pool.infer("m", {"x": [[0.0] * 8]})
    assert kit.gate.count("open", "m") == warmups


def test_a_lazy_promotion_that_fails_records_why_and_answers_the_waiting_requests(kit: PoolKit) -> None:
    kit.publish("m")
    pool = kit.make_pool(allowed_architectures=[])  # restore refuses the factory
    kit.registry.queued["m"] = 3
    with pytest.raises(WarmstartError) as first:
        pool.ensure("m", Tier.HOT, urgent=True)
    state = kit.registry.models_of("w1")["m"]
    assert state["health"] == "failing" and "not registered" in state["last_error"]
    assert "m" in kit.gate.open_queues  # consuming, to answer the waiting requests
    assert kit.registry.hot_workers("m") == []  # but not serving: the beat still sees it cold
    with pytest.raises(type(first.value), match="not registered"):
        pool.infer("m", {"x": [[0.0] * 8]})


def test_a_forward_that_raises_is_a_typed_answer(kit: PoolKit) -> None:
    from warmstart.infra.errors import ModelExecutionError

    kit.publish("m", inputs=(InputSpec("x", "float32", ("batch", "features")),), golden_inputs={"x": torch.rand(2, 8)})
    pool = kit.make_pool()
    with pytest.raises(ModelExecutionError, match="RuntimeError"):
        pool.infer("m", {"x": [[0.0] * 5]})
    assert pool.infer("m", {"x": [[0.0] * 8]})["model"] == "m"  # the model is still fine


def test_a_warm_up_that_raises_is_typed_and_recorded(kit: PoolKit, tmp_path: Path) -> None:
    from warmstart.infra.errors import ModelExecutionError

    flag = tmp_path / "flag"
    kit.publish("m", factory="tests.models:build_flaky", flag_path=str(flag))
    flag.write_text("raise")
    pool = kit.make_pool()
    with pytest.raises(ModelExecutionError, match="raised on purpose"):
        pool.ensure("m", Tier.HOT)
    assert pool.slots["m"].last_error and "raised on purpose" in pool.slots["m"].last_error


def test_buffers_the_kwargs_create_count_against_the_budget(kit: PoolKit) -> None:
    kit.publish("big", factory="tests.models:build_buffered", buffer_elems=2_000_000)  # 8 MB, not in the file
    pool = kit.make_pool(host_budget_bytes=4 * 1024**2, device_budget_bytes=4 * 1024**2)
    with pytest.raises(BudgetError, match="holds"):
        pool.ensure("big", Tier.HOST)
    assert pool.slots["big"].tier < Tier.HOST
    assert pool.usage()["host_bytes"] == 0


def _room_held_by_a_request(kit: PoolKit, tmp_path: Path, **overrides: Any) -> tuple[Any, Path, threading.Thread]:
    """A pool with room for one model, that model HOT and a request of it running (blocked
    until the flag file is removed), and a second model published."""
    flag = tmp_path / "flag"
    kit.publish("busy", factory=FLAKY, flag_path=str(flag))
    kit.publish("next")
    size = max(kit.store.size(f"snapshots/{m}/v1/model.safetensors") or 0 for m in ("busy", "next"))
    pool = kit.make_pool(host_budget_bytes=int(size * 1.5), device_budget_bytes=int(size * 1.5), **overrides)
    pool.ensure("busy", Tier.HOT)
    flag.write_text("block")
    request = threading.Thread(target=lambda: pool.infer("busy", {"x": [[0.0] * 8]}))
    request.start()
    while pool.slots["busy"].in_flight == 0:
        threading.Event().wait(0.005)
    return pool, flag, request


def _in_thread(work: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as e:  # judged by the test
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_request_waits_for_the_request_that_holds_its_room(kit: PoolKit, tmp_path: Path) -> None:
    pool, flag, request = _room_held_by_a_request(kit, tmp_path, room_wait_s=60)
    # A beat's pre-warm is refused at once (the next tick plans it again) ...
    with pytest.raises(BudgetError, match="in use") as refused:
        pool.ensure("next", Tier.HOT)
    assert refused.value.busy and "waited" not in str(refused.value)
    # ... while a request for the model waits for the room.
    waiting, outcome = _in_thread(lambda: pool.infer("next", {"x": [[0.0] * 8]}))
    waiting.join(0.3)
    assert "error" not in outcome  # not refused while the other request runs
    assert pool.slots["busy"].tier == Tier.HOT  # and nothing demoted under that request
    flag.unlink()
    request.join(30)
    waiting.join(30)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["value"]["outputs"]  # answered
    assert pool.slots["next"].tier == Tier.HOT
    assert pool.slots["busy"].tier < Tier.DEVICE  # demoted once idle, to make the room


def test_a_promotion_whose_room_stays_in_use_is_refused_after_the_wait(kit: PoolKit, tmp_path: Path) -> None:
    pool, flag, request = _room_held_by_a_request(kit, tmp_path, room_wait_s=0.2)
    try:
        with pytest.raises(BudgetError, match="waited 0.2 s for room: WARMSTART_ROOM_WAIT_S") as refused:
            pool.ensure("next", Tier.HOT, urgent=True)
        assert refused.value.busy
        assert pool.slots["busy"].tier == Tier.HOT and pool.slots["busy"].in_flight == 1
        assert pool._reservations.total(Tier.HOST) == 0 and pool._reservations.total(Tier.DEVICE) == 0
    finally:
        flag.unlink()
        request.join(30)


def test_a_model_larger_than_the_budget_is_refused_without_waiting(kit: PoolKit) -> None:
    kit.publish("big", inputs=(InputSpec("x", "float32", ("batch", 64)),), features=64, outputs=64)
    size = kit.store.size("snapshots/big/v1/model.safetensors") or 0
    pool = kit.make_pool(host_budget_bytes=size // 2, device_budget_bytes=size // 2, room_wait_s=600)
    promotion, outcome = _in_thread(lambda: pool.ensure("big", Tier.HOT, urgent=True))
    promotion.join(30)  # a wait would last 600 s
    assert not promotion.is_alive()
    assert isinstance(outcome.get("error"), BudgetError) and not outcome["error"].busy
    assert "larger than the whole HOST budget" in str(outcome["error"])
