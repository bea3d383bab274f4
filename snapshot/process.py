"""Per-process preparation: pay torch's one-time costs once, at worker start.

The first restore in a fresh process would otherwise pay for torch's lazy initialisation:
the first use of the ``meta`` device (~1 s of imports and registrations), the first
``UntypedStorage.from_file``, the first ``load_state_dict(assign=True)``, the entry-point scan
of the architecture registry, and the first forward of each common layer (kernel dispatch
tables, oneDNN/MKL primitives, the OpenMP thread pool). :func:`prepare_process` pays all of
these by restoring two tiny example models through the real restore path and running them,
so that no per-model restore or first inference does.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import torch
from safetensors.torch import save_model

from infra.errors import SettingsError

_prepared: set[str] = set()
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


def _warm_up(device: torch.device) -> None:
    # Imported here: restore and examples import this module's siblings, not the other way.
    from snapshot.examples import transformer_example, recsys_example
    from snapshot.restore import restore_weights

    examples = (transformer_example(0.25, name="warm-up-encoder"), recsys_example("live-events", scale=0.05))
    with tempfile.TemporaryDirectory(prefix="warmstart-prepare-") as tmp:
        for i, example in enumerate(examples):
            path = Path(tmp) / f"warm-up-{i}.safetensors"
            save_model(example.build(seed=0), str(path))  # leaves the global RNG alone
            module = restore_weights(path, example.architecture, device=device)
            inputs = {k: v.to(device) for k, v in example.golden_inputs(batch=2).items()}
            with torch.inference_mode():
                module(**inputs)
            with torch.no_grad():
                module(**inputs)
    # A matmul big enough to go parallel starts the intra-op thread pool.
    a = torch.ones(256, 256, device=device)
    with torch.inference_mode():
        (a @ a).sum().item()
