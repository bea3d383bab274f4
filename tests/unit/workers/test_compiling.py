"""The compile step of a model published with ``compile``: the worker compiles it before its
warm-up and health check, serves the compiled module, reports what it did, and answers a
compile that does not finish in time with a typed error (the model is not made HOT). The
``eager`` backend traces without generating code: the step's logic, in milliseconds
(tests/integration/test_compile.py runs inductor)."""

from __future__ import annotations

import pytest
import torch

from warmstart.infra.errors import ModelExecutionError
from warmstart.infra.tiers import Tier
from warmstart.workers.compiling import is_compiled
from warmstart.workers.wire import decode_outputs, encode_tensor
from tests.unit.workers.conftest import PoolKit


def test_a_compiled_model_is_hot_after_its_compile_step_and_answers_exactly(kit: PoolKit) -> None:
    module = kit.publish("m", compile_spec={"backend": "eager", "mode": "default"})
    pool = kit.make_pool()
    slot = pool.ensure("m", Tier.HOT)
    assert slot.tier == Tier.HOT and is_compiled(slot.device_module) and not is_compiled(slot.host_module)
    report = slot.state()["compile"]
    assert report["backend"] == "eager" and report["source"] == "compiled here" and report["seconds"] >= 0
    x = torch.randn(3, 8)
    answer = pool.infer("m", {"x": encode_tensor(x)})
    with torch.inference_mode():
        assert torch.allclose(decode_outputs(answer["outputs"])["output"], module(x), atol=1e-6)

    # Down to HOST and back: the eager module is kept below, and compiled again on the way up.
    pool.demote("m", Tier.HOST)
    assert slot.device_module is None and not is_compiled(slot.host_module)
    pool.ensure("m", Tier.HOT)
    assert is_compiled(slot.device_module)


def test_an_uncompiled_model_has_no_compile_step(kit: PoolKit) -> None:
    kit.publish("m")
    slot = kit.make_pool().ensure("m", Tier.HOT)
    assert not is_compiled(slot.device_module) and slot.state()["compile"] is None


@pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace the builtin:UserWarning")  # time.sleep
def test_a_compile_past_its_deadline_is_a_typed_error_and_the_model_is_not_served(kit: PoolKit) -> None:
    kit.publish("m", compile_spec={"backend": "eager", "mode": "default"}, delay_s=0.5)
    pool = kit.make_pool(compile_timeout_s=0.05)  # its first compiled forward takes 0.5 s
    with pytest.raises(ModelExecutionError, match="WARMSTART_COMPILE_TIMEOUT_S"):
        pool.ensure("m", Tier.HOT)
    assert pool.slot("m").tier != Tier.HOT and not pool.slot("m").consuming


def test_a_signed_artifact_torch_cannot_read_is_reported_and_the_model_compiles_here(kit: PoolKit) -> None:
    from warmstart.snapshot.catalog import read_manifest
    from warmstart.snapshot.compiled import platform_key, push_artifact
    from warmstart.workers.compiling import _load_from_store

    kit.publish("m", compile_spec={"backend": "inductor", "mode": "default"})
    manifest = read_manifest(kit.store, "m", "v1")
    key = b"k" * 32
    push_artifact(kit.store, key, "m", "v1", platform_key("cpu"), b"signed, but not torch's format")
    report = _load_from_store(kit.store, manifest, platform_key("cpu"), key)
    assert report["store_artifact"].startswith("unloadable") and "source" not in report
    assert _load_from_store(kit.store, manifest, platform_key("cpu"), b"x" * 32)["store_artifact"].startswith("refused")
    assert _load_from_store(kit.store, manifest, platform_key("cpu"), None)["store_artifact"].startswith("ignored")


@pytest.mark.parametrize("branch_on_batch", [False, True])
def test_no_request_shape_compiles_after_the_model_is_hot(kit: PoolKit, branch_on_batch: bool) -> None:
    from torch._dynamo.utils import counters

    from warmstart.workers.compiling import UNBACKED

    # branch_on_batch: the model's code depends on its batch size, so one graph cannot serve
    # every size: the step's probes compile what it needs before the model is HOT.
    module = kit.publish("m", compile_spec={"backend": "eager", "mode": "default"}, branch_on_batch=branch_on_batch)
    pool = kit.make_pool()
    slot = pool.ensure("m", Tier.HOT)
    assert slot.state()["compile"]["shapes"] == UNBACKED
    graphs = counters["stats"]["unique_graphs"]
    for batch in (1, 3, 5, 16, 2):  # a single request, then batches of any size
        x = torch.randn(batch, 8)
        answer = pool.infer("m", {"x": encode_tensor(x)})
        with torch.inference_mode():
            assert torch.allclose(decode_outputs(answer["outputs"])["output"], module(x), atol=1e-6)
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled at request time


def test_a_model_that_cannot_take_an_unbacked_batch_is_compiled_with_a_dynamic_one(kit: PoolKit) -> None:
    from warmstart.workers.compiling import DYNAMIC

    # It counts its rows in Python: torch must know the batch size (and, as for any model
    # whose code needs the exact size, compiles each new size when it first comes).
    module = kit.publish("m", compile_spec={"backend": "eager", "mode": "default"}, rows_in_python=True)
    pool = kit.make_pool()
    slot = pool.ensure("m", Tier.HOT)
    assert slot.tier == Tier.HOT and slot.state()["compile"]["shapes"] == DYNAMIC
    for batch in (1, 3):
        x = torch.randn(batch, 8)
        answer = pool.infer("m", {"x": encode_tensor(x)})
        with torch.inference_mode():
            assert torch.allclose(decode_outputs(answer["outputs"])["output"], module(x), atol=1e-6)


def test_compile_inputs_cover_every_size_a_request_may_bring() -> None:
    from warmstart.snapshot.manifest import InputSpec
    from warmstart.workers.compiling import DYNAMIC, STATIC, UNBACKED, compile_inputs

    class Spec:  # the two fields compile_inputs reads of a manifest
        def __init__(self, *inputs: InputSpec) -> None:
            self.inputs = inputs

    golden = {"ids": torch.ones(1, 5, dtype=torch.long), "mask": torch.ones(1, 5, dtype=torch.long)}
    dynamic = Spec(InputSpec("ids", "int64", ("batch", "seq")), InputSpec("mask", "int64", ("batch", "seq")))
    (wide, single, longer), shapes = compile_inputs(dynamic, golden)  # type: ignore[arg-type]
    assert shapes == UNBACKED
    assert wide["ids"].shape == (2, 5) and wide["mask"].shape == (2, 5)  # batch 1 repeated: 2
    assert single["ids"].shape == (1, 5) and torch.equal(single["ids"], golden["ids"])
    assert longer["ids"].shape == (3, 5)  # a probe at another batch size
    assert not hasattr(golden["ids"], "_dynamo_weak_dynamic_indices")  # the golden tensors are not marked
    assert not hasattr(golden["ids"], "_dynamo_unbacked_indices")
    runs, shapes = compile_inputs(dynamic, golden, unbacked_batch=False)  # type: ignore[arg-type]
    assert [r["ids"].shape for r in runs] == [(2, 5), (1, 5), (3, 5)] and shapes == DYNAMIC
    fixed = Spec(InputSpec("ids", "int64", (1, 5)), InputSpec("mask", "int64", (1, 5)))
    runs, shapes = compile_inputs(fixed, golden)  # type: ignore[arg-type]
    assert [r["ids"].shape for r in runs] == [(1, 5)] and shapes == STATIC
    # The probe one row longer stays within the batch's dim_max.
    two = Spec(InputSpec("ids", "int64", ("batch", "seq"), dim_max={"batch": 2}),
               InputSpec("mask", "int64", ("batch", "seq"), dim_max={"batch": 2}))
    runs, _ = compile_inputs(two, golden)  # type: ignore[arg-type]
    assert [r["ids"].shape for r in runs] == [(2, 5), (1, 5)]
    # A dynamic dimension capped at 1 cannot be widened; the sequence dimension still is dynamic.
    capped = Spec(InputSpec("ids", "int64", ("batch", "seq"), dim_max={"batch": 1}),
                  InputSpec("mask", "int64", ("batch", "seq"), dim_max={"batch": 1}))
    runs, shapes = compile_inputs(capped, golden)  # type: ignore[arg-type]
    assert [r["ids"].shape for r in runs] == [(1, 5)] and shapes == DYNAMIC
