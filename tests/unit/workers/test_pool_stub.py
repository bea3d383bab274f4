"""The model pool against the in-memory gate and registry: tiers, gate and published state."""

from __future__ import annotations

import torch

from warmstart.infra.errors import StateUnavailableError
from warmstart.infra.tiers import Tier
from warmstart.workers.stub import StubGate
from warmstart.workers.wire import decode_outputs, encode_tensor

from tests.unit.workers.conftest import PoolKit


def test_promotion_opens_the_gate_and_publishes_hot(kit: PoolKit) -> None:
    kit.publish("m")
    pool = kit.make_pool()
    slot = pool.ensure("m", Tier.HOT)
    assert slot.tier == Tier.HOT and slot.health == "ok"
    assert kit.gate.open_queues == {"m"}
    assert kit.registry.hot_workers("m") == ["w1"]
    assert {"REMOTE>DISK", "DISK>HOST", "HOST>DEVICE", "DEVICE>HOT"} <= set(kit.registry.transition_costs("m"))


def test_demotion_closes_the_gate_and_forgets_at_remote(kit: PoolKit) -> None:
    kit.publish("m")
    pool = kit.make_pool()
    pool.ensure("m", Tier.HOT)
    pool.demote("m", Tier.HOST)
    assert kit.gate.open_queues == set() and kit.registry.hot_workers("m") == []
    assert kit.registry.models_of("w1")["m"]["tier"] == "HOST"
    pool.demote("m", Tier.REMOTE)
    assert "m" not in pool.slots and "m" not in kit.registry.models_of("w1")


def test_a_demotion_decided_on_a_colder_view_leaves_a_model_that_became_warmer(kit: PoolKit) -> None:
    kit.publish("m")
    pool = kit.make_pool()
    pool.ensure("m", Tier.HOST)  # the beat sees it here and decides to drop it ...
    pool.ensure("m", Tier.HOT)  # ... while a request's lazy warm-up makes it HOT
    pool.demote("m", Tier.REMOTE, seen="HOST")
    assert pool.slots["m"].tier == Tier.HOT and kit.gate.open_queues == {"m"}
    assert kit.registry.hot_workers("m") == ["w1"]
    # DEVICE is HOST to the beat (held, not serving): a decision taken at HOST applies there.
    pool.demote("m", Tier.DEVICE)
    pool.demote("m", Tier.DISK, seen=Tier.HOST)
    assert pool.slots["m"].tier == Tier.DISK
    # Decided on what it is (or with no view given): applied.
    pool.ensure("m", Tier.HOT)
    pool.demote("m", Tier.HOST, seen="HOT")
    assert pool.slots["m"].tier == Tier.HOST and kit.gate.open_queues == set()
    pool.demote("m", Tier.REMOTE)
    assert "m" not in pool.slots


def test_infer_answers_with_the_models_outputs(kit: PoolKit) -> None:
    module = kit.publish("m")
    pool = kit.make_pool()
    x = torch.rand(3, 8)
    answer = pool.infer("m", {"x": encode_tensor(x)})
    assert answer["model"] == "m" and answer["version"] == "v1"
    (got,) = decode_outputs(answer["outputs"]).values()
    with torch.no_grad():
        assert torch.allclose(got, module(x), atol=1e-6)


def test_the_state_says_whether_a_request_or_a_prewarm_made_the_model_hot(kit: PoolKit) -> None:
    kit.publish("lazy")
    kit.publish("planned")
    pool = kit.make_pool()
    pool.ensure("lazy", Tier.HOT, urgent=True)
    pool.ensure("planned", Tier.HOT)
    states = kit.registry.models_of("w1")
    assert states["lazy"]["warmed_by_request"] is True
    assert states["planned"]["warmed_by_request"] is False


class GateThatFailsOnce(StubGate):
    """A broker that refuses the first add_consumer (a connection a Redis restart closed)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def open(self, model: str) -> None:
        if self.failures:
            self.failures -= 1
            raise StateUnavailableError("the broker failed while opening the queue")
        super().open(model)


def test_a_gate_that_cannot_open_leaves_the_model_hot_and_the_health_tick_opens_it(kit: PoolKit) -> None:
    kit.publish("m")
    kit.gate = GateThatFailsOnce()
    pool = kit.make_pool()
    slot = pool.ensure("m", Tier.HOT)  # the model is fine: no error, no failing state
    assert slot.tier == Tier.HOT and slot.health == "ok" and not slot.consuming
    assert kit.registry.hot_workers("m") == []
    pool.health_tick()
    assert slot.consuming and kit.gate.open_queues == {"m"}
    assert kit.registry.hot_workers("m") == ["w1"]


def test_a_cached_file_changed_on_disk_is_fetched_again(kit: PoolKit) -> None:
    module = kit.publish("m")
    pool = kit.make_pool()
    slot = pool.ensure("m", Tier.HOT)
    path = slot.local.weights_path
    with open(path, "r+b") as f:  # tamper with the last byte of the weights
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    results = pool.verify_cached(1 << 30)
    assert ("m", "v1", False) in results
    fresh = pool.slots["m"]
    assert fresh is not slot and fresh.tier == Tier.HOT
    assert pool.cache.verify("m", "v1")  # the copy now cached matches its digest again
    x = torch.rand(2, 8)
    (got,) = decode_outputs(pool.infer("m", {"x": encode_tensor(x)})["outputs"]).values()
    with torch.no_grad():
        assert torch.allclose(got, module(x), atol=1e-6)
