"""A second version staged beside the serving one, then switched to: requests keep being
answered (by the old version, then the new), the queue never closes, budgets hold, and a
version that cannot be made ready changes nothing. Threads against small budgets; the
in-memory gate and registry."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from warmstart.infra.errors import BudgetError, HealthCheckError, InvalidInputError, ModelStateError, UnknownModelError
from warmstart.infra.tiers import Tier
from warmstart.snapshot.manifest import InputSpec
from warmstart.workers.wire import decode_outputs, encode_tensor
from tests.models import FLAKY
from tests.unit.workers.conftest import PoolKit

WIDE = (InputSpec("x", "float32", ("batch", 64)),)


def _closes(kit: PoolKit, model: str) -> int:
    return kit.gate.count("close", model)


def test_switching_to_a_staged_version_under_load_answers_every_request_and_never_closes_the_queue(kit: PoolKit) -> None:
    v1 = kit.publish("m", "v1", seed=1)
    v2 = kit.publish("m", "v2", seed=2)
    pool = kit.make_pool()
    pool.ensure("m", Tier.HOT)
    x = torch.rand(2, 8)
    with torch.no_grad():
        expected = {"v1": v1(x), "v2": v2(x)}
    stop = threading.Event()
    answers: list[list[Any]] = [[], [], []]  # per client thread, in its order

    def requests(mine: list[Any]) -> None:
        while not stop.is_set():
            try:
                answer = pool.infer("m", {"x": encode_tensor(x)})
                (out,) = decode_outputs(answer["outputs"]).values()
                mine.append((answer["version"], torch.allclose(out, expected[answer["version"]], atol=1e-6)))
            except Exception as e:  # judged below
                mine.append(e)

    threads = [threading.Thread(target=requests, args=(mine,)) for mine in answers]
    for t in threads:
        t.start()
    staged = pool.versions.stage("m", "v2")
    assert staged["version"] == "v2" and pool.slot("m").version == "v1"  # staged, not serving
    assert pool.versions.status() == {"m": "v2"}
    pool.versions.switch("m", "v2")
    counts = [len(mine) for mine in answers]
    while any(len(mine) < n + 5 for mine, n in zip(answers, counts)):
        stop.wait(0.01)
    stop.set()
    for t in threads:
        t.join(30)

    for mine in answers:
        assert all(isinstance(a, tuple) and a[1] for a in mine), [a for a in mine if not (isinstance(a, tuple) and a[1])][:3]
        versions = [a[0] for a in mine]
        first_new = versions.index("v2")
        # Each client saw the old version, then only the new one: one switch, never back.
        assert first_new > 0 and versions[first_new:] == ["v2"] * (len(versions) - first_new)
    assert _closes(kit, "m") == 0  # the queue stayed open through the switch
    slot = pool.slot("m")
    assert slot.version == "v2" and slot.tier == Tier.HOT and slot.consuming
    assert kit.registry.models["w1"]["m"]["version"] == "v2"
    assert pool.versions.status() == {} and pool._reservations.total(Tier.HOST) == 0


def test_a_version_failing_its_golden_check_is_not_staged_and_the_serving_one_is_untouched(kit: PoolKit) -> None:
    flag = kit.tmp / "flag"
    kit.publish("m", "v1", seed=1)
    kit.publish("m", "v2", factory=FLAKY, flag_path=str(flag))
    pool = kit.make_pool()
    pool.ensure("m", Tier.HOT)
    flag.write_text("offset")  # v2 now answers wrong
    with pytest.raises(HealthCheckError, match="golden"):
        pool.versions.stage("m", "v2")
    slot = pool.slot("m")
    assert slot.version == "v1" and slot.tier == Tier.HOT and slot.consuming and slot.health == "ok"
    assert pool.versions.status() == {} and pool._reservations.total(Tier.DEVICE) == 0
    assert set(kit.registry.models["w1"]) == {"m"}  # the staged copy was never published
    with pytest.raises(ModelStateError, match="not staged"):
        pool.versions.switch("m", "v2")


def test_staging_needs_room_beside_the_serving_version_and_never_evicts_it(kit: PoolKit) -> None:
    kit.publish("m", "v1", inputs=WIDE, features=64, outputs=64, seed=1)
    kit.publish("m", "v2", inputs=WIDE, features=64, outputs=64, seed=2)
    size = kit.store.size("snapshots/m/v1/model.safetensors") or 0
    pool = kit.make_pool(host_budget_bytes=int(size * 1.5), device_budget_bytes=int(size * 1.5))
    pool.ensure("m", Tier.HOT)
    with pytest.raises(BudgetError) as refused:
        pool.versions.stage("m", "v2")
    # The room is held by the serving version the stage itself pins: waiting cannot help,
    # so the stage is refused at once (not after WARMSTART_ROOM_WAIT_S).
    assert not refused.value.busy
    assert pool.slot("m").tier == Tier.HOT and pool.slot("m").version == "v1"
    assert pool._reservations.total(Tier.HOST) == 0 and pool._reservations.total(Tier.DEVICE) == 0

    roomy = kit.make_pool(host_budget_bytes=size * 3, device_budget_bytes=size * 3)
    roomy.ensure("m", Tier.HOT)
    roomy.versions.stage("m", "v2")
    assert roomy.usage()["device_bytes"] >= 2 * size  # the staged version counts
    assert roomy.versions.discard("m") and roomy.usage()["device_bytes"] < 2 * size


def test_staging_an_unpublished_version_is_a_typed_error(kit: PoolKit) -> None:
    kit.publish("m", "v1")
    pool = kit.make_pool()
    pool.ensure("m", Tier.HOT)
    with pytest.raises(UnknownModelError, match="v9"):
        pool.versions.stage("m", "v9")
    assert pool.slot("m").version == "v1" and pool.versions.status() == {}


def test_a_canary_answers_its_share_with_the_staged_version_and_counts_both(kit: PoolKit) -> None:
    v1 = kit.publish("m", "v1", seed=1)
    v2 = kit.publish("m", "v2", seed=2)
    pool = kit.make_pool()
    pool.ensure("m", Tier.HOT)
    with pytest.raises(InvalidInputError, match="from 0 to 1"):
        pool.versions.start_canary("m", "v2", 1.5)
    pool.versions.start_canary("m", "v2", 0.3)
    x = torch.rand(2, 8)
    with torch.no_grad():
        expected = {"v1": v1(x), "v2": v2(x)}
    by_version = {"v1": 0, "v2": 0}
    for _ in range(400):
        answer = pool.infer("m", {"x": encode_tensor(x)})
        (out,) = decode_outputs(answer["outputs"]).values()
        assert torch.allclose(out, expected[answer["version"]], atol=1e-6)
        by_version[answer["version"]] += 1
    assert by_version["v2"] == 120, by_version  # 0.3 asked: every turn spread evenly, none drawn
    report = pool.versions.canary_report("m")
    assert report["share"] == 0.3
    assert {v: c["requests"] for v, c in report["versions"].items()} == by_version
    assert report["versions"]["v2"]["p99_ms"] is not None and report["versions"]["v2"]["errors"] == 0
    with pytest.raises(InvalidInputError):  # a bad request counts against neither version
        pool.infer("m", {"x": encode_tensor(torch.rand(2, 3))})
    assert sum(c["requests"] for c in pool.versions.canary_report("m")["versions"].values()) == 400
    pool.versions.discard("m")  # a rollback: only the serving version answers again
    assert {pool.infer("m", {"x": encode_tensor(x)})["version"] for _ in range(30)} == {"v1"}
    assert pool.versions.canary_report("m")["versions"] == {}


def test_shadow_replays_recent_requests_and_reports_what_the_goldens_hide(kit: PoolKit) -> None:
    kit.publish("m", "v1", seed=1)
    kit.publish("m", "v2", seed=1, nan_above=4.0)  # NaN only on inputs unlike its goldens
    pool = kit.make_pool()
    pool.ensure("m", Tier.HOT)
    with pytest.raises(ModelStateError, match="not staged"):
        pool.versions.shadow("m", "v2")
    for i in range(6):
        x = torch.rand(1, 8)
        if i % 2:
            x[0, 0] = 10.0
        pool.infer("m", {"x": encode_tensor(x)})
    pool.versions.stage("m", "v2")  # its golden check passes
    report = pool.versions.shadow("m", "v2", rounds=2)
    assert report["source"] == "recent requests" and report["requests"] == 6 and report["rounds"] == 2
    assert report["serving"]["non_finite"] == 0 and report["staged"]["non_finite"] == 3 * 2
    assert report["serving"]["errors"] == report["staged"]["errors"] == 0
    assert report["staged"]["p50_ms"] is not None and report["max_abs_diff"] == 0.0  # same weights elsewhere
    assert pool.slot("m").in_flight == 0 and pool.slot("m").version == "v1"


def test_a_version_discarded_while_it_stages_is_not_kept(kit: PoolKit) -> None:
    # A rollout that timed out sends a discard while the stage still runs (a slow warm-up):
    # the stage must keep nothing, and give back the memory it reserved.
    kit.publish("m", "v1", seed=1)
    kit.publish("m", "v2", seed=2, delay_s=0.05)  # every forward of its warm-up takes 50 ms
    pool = kit.make_pool()
    pool.ensure("m", Tier.HOT)
    errors: list[Exception] = []

    def stage() -> None:
        try:
            pool.versions.stage("m", "v2")
        except ModelStateError as e:
            errors.append(e)

    thread = threading.Thread(target=stage)
    thread.start()
    # Discard once the stage has begun (it holds the model busy), before it ends.
    deadline = threading.Event()
    while "m" not in pool.versions._busy and thread.is_alive():
        deadline.wait(0.001)
    assert thread.is_alive(), "the stage ended before it could be discarded; make v2 slower"
    assert not pool.versions.discard("m")  # nothing staged yet ...
    thread.join(60)
    assert errors and "discarded" in str(errors[0])  # ... and nothing kept after
    assert pool.versions.status() == {} and pool.slot("m").version == "v1"
    assert pool._reservations.total(Tier.HOST) == 0 and pool._reservations.total(Tier.DEVICE) == 0
    pool.versions.stage("m", "v2")  # a later stage is kept as usual
    assert pool.versions.status() == {"m": "v2"}
