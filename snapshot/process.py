"""Per-process preparation: pay torch's one-time costs once, at worker start.

The first restore in a fresh process would otherwise pay for torch's lazy initialisation:
the first use of the ``meta`` device (~1 s of imports and registrations), the first
``UntypedStorage.from_file``, the first ``load_state_dict(assign=True)``, the entry-point scan
of the architecture registry, and the first forward of each common layer (kernel dispatch
tables, oneDNN/MKL primitives, the OpenMP thread pool). :func:`prepare_process` pays all of
these by restoring a tiny built-in module made of the common layers (embeddings, linear,
layer norm, a transformer encoder layer) through the real restore path and running it, so that
no per-model restore or first inference does. It depends on no example or user model.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn

from warmstart.infra.errors import SettingsError

_prepared: set[str] = set()
_architectures: set[str] = set()
log = logging.getLogger(__name__)
_lock = threading.Lock()


def resolve_device(setting: str) -> torch.device:
    """Turn the ``device`` setting into a torch device.

    Args:
        setting: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``.

    Raises:
        SettingsError: the setting is not a device, or names CUDA where none is available.
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except (RuntimeError, TypeError) as e:
        raise SettingsError(f"WARMSTART_DEVICE {setting!r} is not a device: use auto, cpu or cuda") from e
    if device.type not in ("cpu", "cuda"):
        raise SettingsError(f"WARMSTART_DEVICE {setting!r} is not supported: use auto, cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(
                f"WARMSTART_DEVICE is {setting!r} but CUDA is not available on this machine: "
                "use auto or cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SettingsError(
                f"WARMSTART_DEVICE {setting!r} names GPU {device.index} but this machine has "
                f"{torch.cuda.device_count()}"
            )
    return device


def prepare_process(device: str | torch.device | None = None) -> None:
    """Pay torch's one-time lazy initialisation now, once per process (and once per device).

    Idempotent: a second call for the same device returns at once. With a CUDA device (and
    CUDA available) it also creates the CUDA context and cuBLAS handle and exercises a
    host-to-device copy of restored weights.

    Args:
        device: ``None`` or a CPU device prepares the CPU path only; ``"cuda"``/``"cuda:N"``
            prepares the CPU path and that GPU; ``"auto"`` resolves as :func:`resolve_device`.
    """
    target = resolve_device(device) if isinstance(device, str) else torch.device(device or "cpu")
    key = str(target)
    if key in _prepared and "cpu" in _prepared:
        return
    with _lock:
        if "cpu" not in _prepared:
            _warm_up(torch.device("cpu"))
            _prepared.add("cpu")
        if key not in _prepared:
            if target.type == "cuda":
                torch.cuda.init()
                torch.ones(1, device=target).sum().item()
                _warm_up(target)
            _prepared.add(key)


def prepare_architectures(allowed_architectures: Iterable[str] = ()) -> dict[str, float]:
    """Import every registered architecture (entry points and ``allowed_architectures``) and
    build each once on ``meta``, so that no request pays an import (``transformers`` takes
    seconds) or a first build. Idempotent per factory.

    A factory is built with its ``warmup_kwargs`` attribute when it has one (the HF
    architecture builds a tiny BERT), or with no arguments when it needs none; otherwise it
    is only imported. A factory that fails is logged and skipped: its models will fail at
    restore with the cause, as before.

    Returns:
        Seconds spent per factory prepared by this call.
    """
    from warmstart.snapshot.manifest import ArchitectureSpec
    from warmstart.snapshot.registry import registered_factories, resolve_factory
    from warmstart.snapshot.restore import _build_on_meta

    extra = tuple(allowed_architectures)
    spent: dict[str, float] = {}
    for factory in sorted(registered_factories() | frozenset(extra)):
        with _lock:
            if factory in _architectures:
                continue
            _architectures.add(factory)
        t0 = time.perf_counter()
        try:
            target = resolve_factory(factory, extra)
            kwargs = getattr(target, "warmup_kwargs", None)
            if kwargs is None and _needs_no_arguments(target):
                kwargs = {}
            if kwargs is not None:
                _build_on_meta(target, ArchitectureSpec(factory, dict(kwargs)))
        except Exception as e:  # noqa: BLE001 - foreign code: log it, its models will say why
            log.warning("could not prepare architecture %s: %s: %s", factory, type(e).__name__, e)
        spent[factory] = time.perf_counter() - t0
    return spent


def _needs_no_arguments(target: object) -> bool:
    try:
        parameters = inspect.signature(target).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)


#: The warm-up module's factory: allowed explicitly for this one restore, never registered.
WARMUP_FACTORY = "warmstart.snapshot.process:build_warmup_module"


class _WarmupModule(nn.Module):
    """The layers most models are made of, tiny: what the first forward of each initialises."""

    def __init__(self, vocab: int = 64, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.features = nn.Linear(8, width)
        self.norm = nn.LayerNorm(width)
        self.encoder = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=2 * width, batch_first=True)
        self.head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1), nn.ReLU())

    def forward(self, ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(ids) + self.features(features).unsqueeze(1))
        return torch.softmax(self.head(self.encoder(x)).squeeze(-1), dim=-1)


def build_warmup_module() -> nn.Module:
    """The tiny module :func:`prepare_process` restores and runs."""
    return _WarmupModule()


def _warm_up(device: torch.device) -> None:
    # Imported here: restore imports this module's siblings, not the other way.
    from warmstart.snapshot.manifest import ArchitectureSpec
    from warmstart.snapshot.restore import restore_weights

    generator = torch.Generator().manual_seed(0)
    inputs = {
        "ids": torch.randint(0, 64, (2, 6), generator=generator),
        "features": torch.rand(2, 8, generator=generator),
    }
    with tempfile.TemporaryDirectory(prefix="warmstart-prepare-") as tmp:
        path = Path(tmp) / "warm-up.safetensors"
        with torch.random.fork_rng(devices=[]):  # initialising layers must leave the global RNG alone
            torch.manual_seed(0)
            save_model(build_warmup_module(), str(path))
        module = restore_weights(
            path, ArchitectureSpec(WARMUP_FACTORY, {}), device=device, allowed_architectures=(WARMUP_FACTORY,)
        )
        on_device = {k: v.to(device) for k, v in inputs.items()}
        with torch.inference_mode():
            module(**on_device)
        with torch.no_grad():
            module(**on_device)
    # A matmul big enough to go parallel starts the intra-op thread pool.
    a = torch.ones(256, 256, device=device)
    with torch.inference_mode():
        (a @ a).sum().item()
