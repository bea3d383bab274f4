"""Metrics and probes of a live worker process, scraped over HTTP and parsed with
prometheus_client's own parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from warmstart.infra.services import free_port
from warmstart.workers.client import Client
from tests.helpers import http_get, wait_for

pytestmark = pytest.mark.integration


def _scrape(base: str) -> dict[tuple[str, frozenset], float]:
    status, body = http_get(base + "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_a_live_worker_serves_metrics_and_is_ready_only_once_its_eager_model_is_hot(
    settings, publish, start_worker, tmp_path: Path
) -> None:
    flag = tmp_path / "flaky.flag"
    publish("eager-f", flaky_flag=flag)
    flag.write_text("offset")  # the eager model fails its golden check until the flag goes
    module = publish("lazy-m")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    start_worker("w-obs", profile="prod", eager_models=["eager-f"], metrics_port=port)

    assert wait_for(lambda: http_get(base + "/healthz")[0] == 200, timeout_s=60)
    wait_for(lambda: _scrape(base).get(("warmstart_health_check_failures_total",
                                     frozenset({"model": "eager-f", "worker": "w-obs"}.items())), 0) >= 1, timeout_s=60)  # fmt: skip
    status, body = http_get(base + "/readyz")
    assert status == 503
    details = json.loads(body)
    assert details["registered"] is True and details["not_hot"][0]["model"] == "eager-f"

    x = torch.randn(1, 8)
    out = Client(settings).infer("lazy-m", {"x": x}, timeout_s=60)["output"]
    with torch.inference_mode():
        torch.testing.assert_close(out, module(x))

    flag.unlink()
    wait_for(lambda: http_get(base + "/readyz")[0] == 200, timeout_s=60)

    samples = _scrape(base)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    lazy = {"model": "lazy-m", "worker": "w-obs"}
    assert value("warmstart_requests_total", **lazy) == 1
    assert value("warmstart_cold_waits_total", **lazy) >= 1
    assert value("warmstart_cold_wait_seconds_total", **lazy) > 0
    assert value("warmstart_forward_seconds_count", **lazy) == 1
    assert value("warmstart_tier_transitions_total", **lazy, from_tier="REMOTE", to_tier="DISK") == 1
    assert value("warmstart_model_tier", **lazy) == 4
    assert value("warmstart_model_tier", model="eager-f", worker="w-obs") == 4
    assert value("warmstart_worker_ready", worker="w-obs") == 1
    assert value("warmstart_memory_budget_bytes", worker="w-obs", tier="device") == settings.device_budget_bytes


def test_a_live_beat_serves_its_lease_and_ticks_and_a_second_on_the_same_port_exits_clearly(
    worker_settings, redis_url: str
) -> None:
    from warmstart.processes import ChildProcess

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    beat = ChildProcess(["beat", "--loglevel", "WARNING"], {**worker_settings, "plan_interval_s": 0.5, "metrics_port": port}).start()
    try:
        wait_for(lambda: http_get(base + "/readyz")[0] == 200, timeout_s=30)
        assert http_get(base + "/healthz")[0] == 200

        def leading() -> dict | None:
            samples = _scrape(base)
            leader = [v for (name, _), v in samples.items() if name == "warmstart_beat_leader"]
            return samples if leader == [1.0] and samples[("warmstart_beat_tick_seconds_count", frozenset())] >= 2 else None

        samples = wait_for(leading, timeout_s=30)
        assert samples[("warmstart_beat_tick_failures_total", frozenset())] == 0

        second = ChildProcess(["beat"], {**worker_settings, "metrics_port": port}).start()
        try:
            assert second.process.wait(60) == 2
            assert "metrics port" in second.output() and "in use" in second.output()
        finally:
            second.close()
    finally:
        beat.close()
