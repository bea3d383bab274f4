"""Joining warm: a worker that starts while the beat plans warms the planner's assignment
before it says it is ready, even with no eager models of its own."""

from __future__ import annotations

import json

import pytest

from warmstart.infra.redis_client import connect
from warmstart.infra.services import free_port
from warmstart.infra.settings import load_settings
from warmstart.processes import ChildProcess
from warmstart.workers.registry import WorkerRegistry
from tests.helpers import http_get, wait_for

pytestmark = pytest.mark.integration


def test_a_joining_worker_warms_the_planners_assignment_before_it_is_ready(worker_settings, publish, start_worker) -> None:
    # The beat wants both eager models on two workers (replicas, prod); the joining worker has
    # no eager list, so only the planner's assignment can make it warm them.
    values = {**worker_settings, "profile": "prod", "eager_models": ["ja", "jb"], "plan_interval_s": 0.3,
              "scale_min_workers": 2}
    settings = load_settings(**values)
    publish("ja")
    publish("jb")
    start_worker("w-j0", profile="prod", eager_models=["ja", "jb"])
    beat = ChildProcess(["beat", "--loglevel", "WARNING"], values).start()
    try:
        registry = WorkerRegistry(connect(settings.redis_url))
        wait_for(registry.planner_alive, timeout_s=60, what="the beat plans")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        start_worker("w-j1", wait=False, profile="prod", eager_models=[], metrics_port=port)

        answers: list[tuple[int, dict]] = []

        def ready() -> bool:
            status, body = http_get(base + "/readyz")
            if status == 0:
                return False  # not listening yet
            answers.append((status, json.loads(body)))
            return status == 200

        wait_for(ready, timeout_s=90, interval_s=0.05, what="the joining worker is ready")
        details = answers[-1][1]
        assert details["start_from"] == "planner" and details["not_hot"] == []
        assert sorted(m for m, t in details["start_list"] if t == "HOT") == ["ja", "jb"]
        # Before it was ready it said why: undecided, or models of its list not HOT yet.
        assert all(d["start_from"] is None or d["not_hot"] for s, d in answers[:-1] if s != 200)
        wait_for(lambda: all("w-j1" in registry.hot_workers(m) for m in ("ja", "jb")), timeout_s=10)
    finally:
        beat.close()
