"""The CLI as a user runs it, against real services and a real worker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from warmstart.demo import DemoConfig, run_demo
from warmstart.processes import settings_env
from tests.helpers import wait_for
from warmstart.workers.registry import WorkerRegistry
from warmstart.infra.redis_client import connect

pytestmark = pytest.mark.integration


def warmstart(worker_settings: dict, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, **settings_env(worker_settings)}
    return subprocess.run([sys.executable, "-m", "warmstart.cli", *args], env=env, capture_output=True, text=True, timeout=120)


def test_status_and_infer_commands(worker_settings, settings, publish, start_worker) -> None:
    module = publish("cli-model")
    start_worker("w-cli", profile="prod", eager_models=["cli-model"])
    wait_for(lambda: WorkerRegistry(connect(settings.redis_url)).hot_workers("cli-model"), timeout_s=60)

    status = warmstart(worker_settings, "status", "--json")
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)["workers"]["w-cli"]
    assert state["alive"] and state["models"]["cli-model"]["tier"] == "HOT"
    table = warmstart(worker_settings, "status")
    assert "w-cli" in table.stdout and "cli-model" in table.stdout

    x = [[0.5] * 8]
    answer = warmstart(worker_settings, "infer", "cli-model", "--input", json.dumps({"x": x}))
    assert answer.returncode == 0, answer.stderr
    out = json.loads(answer.stdout)
    from warmstart.workers.wire import decode_outputs

    with torch.inference_mode():
        expected = module(torch.tensor(x))
    torch.testing.assert_close(decode_outputs(out["outputs"])["output"], expected)

    bad = warmstart(worker_settings, "infer", "cli-model", "--input", "{not json")
    assert bad.returncode == 2 and "InvalidInputError" in bad.stderr and "Traceback" not in bad.stderr
    unknown = warmstart(worker_settings, "infer", "nope", "--input", "{}")
    assert unknown.returncode == 2 and "UnknownModelError" in unknown.stderr


def test_demo_runs_end_to_end(tmp_path) -> None:
    report = run_demo(DemoConfig(out_dir=tmp_path, traffic_s=5.0, mean_rate_per_s=6.0, surge=False, rollout=False))
    prod, dev = report["profiles"]["prod"]["models"], report["profiles"]["dev"]["models"]
    assert prod["all"]["requests"] == dev["all"]["requests"] > 0
    assert prod["all"]["failed"] == 0 and dev["all"]["failed"] == 0
    # prod pre-warms its eager models before it joins; dev loads everything on demand.
    assert prod["short-form"]["cold_starts"] == 0
    assert dev["short-form"]["cold_starts"] >= 1
    assert len(report["restore"]) == 5 and all(r["restore_s"] > 0 for r in report["restore"])
    assert (tmp_path / "tiers.png").stat().st_size > 0 and (tmp_path / "report.json").exists()


def test_plain_celery_worker_command(worker_settings, settings) -> None:
    """`celery -A warmstart.app worker -P threads` is a warmstart worker; prefork is refused."""
    import os
    import time

    env = {**os.environ, **settings_env(worker_settings)}
    celery = [sys.executable, "-m", "celery", "-A", "warmstart.app", "worker", "--loglevel", "WARNING"]
    refused = subprocess.run([*celery, "-P", "prefork", "-c", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "threads pool" in refused.stderr

    worker = subprocess.Popen([*celery, "-P", "threads", "-n", "plain@%h"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        registry = WorkerRegistry(connect(settings.redis_url))
        names = wait_for(lambda: [n for n in registry.workers()[0] if n.startswith("plain@")], timeout_s=60)
        assert registry.workers()[0][names[0]]["control_queue"] == f"warmstart.worker.{names[0]}"
    finally:
        worker.terminate()
        worker.wait(30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and registry.worker_names():
        time.sleep(0.1)
    assert registry.worker_names() == []  # a clean shutdown leaves nothing in the registry
