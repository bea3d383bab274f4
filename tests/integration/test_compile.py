"""A model published with ``--compile inductor`` served by real workers: one holding the
signing key starts from the signed artifact that `warmstart compile-cache push` put in the
store; one holding another key refuses it and compiles from scratch; one with no key ignores
it and reuses its host's compile cache. Every answer is exact. Pushing without a key, or a
model published without --compile, is a typed error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from warmstart.infra.redis_client import connect
from warmstart.infra.settings import load_settings
from warmstart.processes import settings_env
from warmstart.workers.client import Client
from warmstart.workers.registry import WorkerRegistry

pytestmark = pytest.mark.integration

KEY = "k" * 32
INDUCTOR = {"backend": "inductor", "mode": "default"}


def test_workers_load_only_signed_compile_artifacts_and_reuse_their_host_cache(
        worker_settings, publish, start_worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # torch writes its default cache directory into the environment of a process that compiled
    # something (this test process may have); the workers must choose their own.
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    module = publish("cm", compile_spec=INDUCTOR)
    publish("plain")
    env = {**os.environ, **settings_env(worker_settings), "TORCHINDUCTOR_CACHE_DIR": ""}

    def cli(*args: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
        extra = {"WARMSTART_SIGNING_KEY": key} if key else {}
        return subprocess.run([sys.executable, "-m", "warmstart.cli", *args], capture_output=True, text=True,
                              env={**env, **extra}, timeout=600)  # fmt: skip

    pushed = cli("compile-cache", "push", "cm")
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed compiled/cm/v1/torch-" in pushed.stdout and "signed" in pushed.stdout
    unkeyed = cli("compile-cache", "push", "cm", key=None)
    assert unkeyed.returncode == 2 and "WARMSTART_SIGNING_KEY" in unkeyed.stderr
    plain = cli("compile-cache", "push", "plain")
    assert plain.returncode == 2 and "--compile inductor" in plain.stderr

    settings = load_settings(**worker_settings)
    registry = WorkerRegistry(connect(settings.redis_url))
    client = Client(settings)
    x = torch.randn(3, 8)

    def serve(name: str, **overrides: object) -> dict:
        worker = start_worker(name, **overrides)
        answer = client.infer("cm", {"x": x}, timeout_s=300)["output"]
        with torch.inference_mode():
            assert torch.allclose(answer, module(x), atol=1e-5)
        report = registry.models_of(name)["cm"]["compile"]
        worker.stop()
        return report

    try:
        signed = serve("w-k1", signing_key=KEY, cache_dir=str(tmp_path / "c1"))
        assert signed["source"] == "signed artifact" and signed["store_artifact"].startswith("loaded"), signed
        assert signed["cache_hits"] > 0 and signed["cache_misses"] == 0  # what it compiled came from the artifact
        refused = serve("w-k2", signing_key="x" * 32, cache_dir=str(tmp_path / "c2"))
        assert refused["source"] == "compiled here", refused
        assert "does not match the workers' key" in refused["store_artifact"]
        assert refused["cache_misses"] > 0
        # No key: the store's artifact is never loaded; this host's cache (w-k2's) is.
        local = serve("w-k3", cache_dir=str(tmp_path / "c2"))
        assert local["source"] == "host cache" and local["store_artifact"].startswith("ignored"), local
        assert local["cache_hits"] > 0 and local["cache_misses"] == 0
    finally:
        client.close()
        client.app.close()
