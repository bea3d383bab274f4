"""The worker's metrics and probes, on a real pool with the in-memory gate and registry."""

from __future__ import annotations

import torch
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client import generate_latest

from warmstart.infra.settings import load_settings
from warmstart.infra.tiers import Tier
from warmstart.snapshot.cache import SnapshotCache
from warmstart.workers.joining import Joining
from warmstart.workers.metrics import MeteredPool, PoolCollector, WorkerMetrics
from warmstart.workers.probes import WorkerProbes
from warmstart.workers.wire import encode_tensor
from tests.models import FLAKY, TINY
from tests.unit.workers.conftest import PoolKit


def _metered(kit: PoolKit, **overrides: object) -> tuple[MeteredPool, WorkerMetrics]:
    settings = load_settings(**{
        "store_url": f"file://{kit.tmp / 'store'}", "cache_dir": str(kit.tmp / "cache"),
        "allowed_architectures": [TINY, FLAKY], "warmup_max_runs": 2, "device": "cpu", "verify_interval_s": 0,
        **overrides,
    })  # fmt: skip
    metrics = WorkerMetrics("w1")
    cache = SnapshotCache(settings.cache_dir, settings.cache_budget_bytes)
    pool = MeteredPool(settings, "w1", kit.store, cache, kit.registry, kit.gate, torch.device("cpu"), metrics=metrics)
    metrics.registry.register(PoolCollector(pool))
    return pool, metrics


def _samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_requests_cold_waits_transitions_and_tiers_are_counted(kit: PoolKit) -> None:
    kit.publish("m")
    pool, metrics = _metered(kit, device_budget_bytes=10**6, host_budget_bytes=2 * 10**6)
    payload = {"x": encode_tensor(torch.randn(2, 8))}
    pool.infer("m", payload)  # cold: the request promotes the model itself
    pool.infer("m", payload)  # warm
    s = _samples(metrics)
    assert _value(s, "warmstart_requests_total", model="m", worker="w1") == 2
    assert _value(s, "warmstart_cold_waits_total", model="m", worker="w1") == 1
    assert _value(s, "warmstart_cold_wait_seconds_total", model="m", worker="w1") > 0
    assert _value(s, "warmstart_forward_seconds_count", model="m", worker="w1") == 2
    for source, target in (("REMOTE", "DISK"), ("DISK", "HOST"), ("HOST", "DEVICE"), ("DEVICE", "HOT")):
        labels = {"model": "m", "worker": "w1", "from_tier": source, "to_tier": target}
        assert _value(s, "warmstart_tier_transitions_total", **labels) == 1
        assert _value(s, "warmstart_tier_transition_seconds_count", **labels) == 1
    assert _value(s, "warmstart_model_tier", model="m", worker="w1") == int(Tier.HOT)
    assert _value(s, "warmstart_model_consuming", model="m", worker="w1") == 1
    assert _value(s, "warmstart_memory_budget_bytes", worker="w1", tier="device") == 10**6
    assert _value(s, "warmstart_memory_budget_bytes", worker="w1", tier="host") == 2 * 10**6
    assert _value(s, "warmstart_memory_used_bytes", worker="w1", tier="device") > 0

    pool.demote("m", "HOST")
    s = _samples(metrics)
    assert _value(s, "warmstart_model_tier", model="m", worker="w1") == int(Tier.HOST)
    assert _value(s, "warmstart_tier_transitions_total", model="m", worker="w1", from_tier="HOT", to_tier="DEVICE") == 1


def test_an_error_answer_counts_as_a_request_and_an_error_not_a_forward(kit: PoolKit) -> None:
    kit.publish("m")
    pool, metrics = _metered(kit)
    pool.ensure("m", "HOT")
    try:
        pool.infer("m", {"x": [[1.0, 2.0]]})  # wrong shape
    except Exception:
        pass
    s = _samples(metrics)
    assert _value(s, "warmstart_requests_total", model="m", worker="w1") == 1
    assert _value(s, "warmstart_request_errors_total", model="m", worker="w1") == 1
    assert _value(s, "warmstart_forward_seconds_count", model="m", worker="w1") == 0
    assert _value(s, "warmstart_cold_waits_total", model="m", worker="w1") is None  # a pre-warm is no wait


def test_failed_health_checks_are_counted_and_readiness_waits_for_eager_models(kit: PoolKit) -> None:
    flag = kit.tmp / "flag"
    kit.publish("f", factory=FLAKY, flag_path=str(flag))
    pool, metrics = _metered(kit, profile="prod", eager_models=["f"], heartbeat_ttl_s=5)
    joining = Joining(pool.settings, None, pool, "w1")
    probes = WorkerProbes(pool.settings, pool, joining.readiness)
    assert probes.live()[0]  # just started
    assert not probes.ready()[0]  # never registered, nothing HOT
    probes.beat_done(True)
    ok, details = probes.ready()
    assert not ok and details["start_from"] is None  # registered, but not yet chosen what to warm
    joining.decide([("f", Tier.HOT)], "eager")
    ok, details = probes.ready()
    assert not ok and details["registered"] and details["not_hot"][0]["model"] == "f"

    flag.write_text("offset")
    try:
        pool.ensure("f", "HOT")
    except Exception:
        pass
    assert _value(_samples(metrics), "warmstart_health_check_failures_total", model="f", worker="w1") == 1
    assert not probes.ready()[0]

    flag.unlink()
    pool.slot("f").retry_at_s = 0.0  # its backoff is over
    pool.ensure("f", "HOT")
    ok, details = probes.ready()
    assert ok and details["not_hot"] == []
