"""The probe server: /metrics, probes answering 200 or 503, a port in use as a typed error."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from warmstart.infra.errors import ServiceError
from warmstart.infra.http import ProbeServer
from tests.helpers import http_get


def test_metrics_and_probes_are_served_and_a_port_in_use_is_a_typed_error() -> None:
    registry = CollectorRegistry()
    Counter("warmstart_things", "Things.", registry=registry).inc(3)
    state = {"ready": False}
    server = ProbeServer("127.0.0.1", 0, registry, {
        "/healthz": lambda: (True, {}),
        "/readyz": lambda: (state["ready"], {"why": "warming"}),
    }).start()  # fmt: skip
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, body = http_get(base + "/metrics")
        assert status == 200
        values = {s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples}
        assert values["warmstart_things_total"] == 3
        assert http_get(base + "/healthz")[0] == 200
        status, body = http_get(base + "/readyz")
        assert status == 503 and json.loads(body) == {"ok": False, "why": "warming"}
        state["ready"] = True
        assert http_get(base + "/readyz")[0] == 200
        assert http_get(base + "/nothing")[0] == 404
        with pytest.raises(ServiceError, match="in use"):
            ProbeServer("127.0.0.1", server.port, registry, {})
    finally:
        server.stop()


def test_a_probe_that_raises_answers_not_ok() -> None:
    def broken() -> tuple[bool, dict]:
        raise RuntimeError("boom")

    server = ProbeServer("127.0.0.1", 0, CollectorRegistry(), {"/readyz": broken}).start()
    try:
        status, body = http_get(f"http://127.0.0.1:{server.port}/readyz")
        assert status == 503 and "boom" in json.loads(body)["error"]
    finally:
        server.stop()
