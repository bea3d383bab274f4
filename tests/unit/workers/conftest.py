"""A real :class:`ModelPool` over a local store and cache, with the in-memory gate and registry
(no Redis, no Celery), and tiny published models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from warmstart.infra.settings import Settings, load_settings
from warmstart.snapshot.cache import SnapshotCache
from warmstart.snapshot.manifest import InputSpec
from warmstart.snapshot.publish import publish_module
from warmstart.snapshot.stores.local import LocalStore
from warmstart.workers.pool import ModelPool
from warmstart.workers.stub import StubGate, StubRegistry
from tests.models import BUFFERED, FLAKY, TINY, build_buffered, build_flaky, build_tiny

TINY_INPUTS = (InputSpec("x", "float32", ("batch", 8)),)


class PoolKit:
    """A pool with its store, stubs and a publish helper."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.store = LocalStore(tmp / "store")
        self.gate = StubGate()
        self.registry = StubRegistry()
        self.pool: ModelPool | None = None

    def publish(
        self, model: str, version: str = "v1", *, factory: str = TINY, inputs: Any = TINY_INPUTS,
        golden_inputs: dict[str, torch.Tensor] | None = None, seed: int | None = None,
        compile_spec: dict[str, str] | None = None, **kwargs: Any,
    ) -> torch.nn.Module:
        """Publish a test model (tiny by default) and return the module it was published from
        (its weights drawn from ``seed``, by default the name's length)."""
        torch.manual_seed(len(model) if seed is None else seed)
        build = {TINY: build_tiny, FLAKY: build_flaky, BUFFERED: build_buffered}[factory]
        module = build(**kwargs)
        publish_module(
            self.store, model, version, module, {"factory": factory, "kwargs": kwargs}, inputs,
            golden_inputs, allowed_architectures=[factory], show_progress=False, compile_spec=compile_spec,
        )  # fmt: skip
        return module

    def make_pool(self, **overrides: Any) -> ModelPool:
        settings: Settings = load_settings(**{
            "store_url": f"file://{self.tmp / 'store'}", "cache_dir": str(self.tmp / "cache"),
            "allowed_architectures": [TINY, FLAKY, BUFFERED], "warmup_max_runs": 2, "device": "cpu",
            "verify_interval_s": 0, **overrides,
        })  # fmt: skip
        cache = SnapshotCache(settings.cache_dir, settings.cache_budget_bytes)
        self.pool = ModelPool(settings, "w1", self.store, cache, self.registry, self.gate, torch.device("cpu"))
        return self.pool


@pytest.fixture
def kit(tmp_path: Path) -> PoolKit:
    return PoolKit(tmp_path)


@pytest.fixture
def make_kit(tmp_path: Path) -> Callable[[], PoolKit]:
    return lambda: PoolKit(tmp_path)
