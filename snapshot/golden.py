"""Golden inputs and outputs: what a model answered when it was published.

Publish runs the golden inputs and records the outputs in ``golden.safetensors`` (tensors
``input.<name>`` and ``output.<name>``). A worker's health check runs the same inputs on the
restored model and requires :func:`compare_outputs` to pass: same names, shapes and dtypes,
finite values, within ``rtol``/``atol``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from warmstart.infra.errors import SafetensorsHeaderError, SnapshotError
from warmstart.snapshot.manifest import GoldenInfo, InputSpec

INPUT_PREFIX = "input."
OUTPUT_PREFIX = "output."
#: The size given to a dynamic (named) dimension other than ``batch``.
DYNAMIC_DIM_SIZE = 4

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int64": torch.int64, "int32": torch.int32,
    "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}  # fmt: skip


@dataclass(frozen=True)
class GoldenCheck:
    """The result of comparing outputs with golden ones.

    ``max_abs_err`` is the largest absolute difference over all outputs (``inf`` when they
    could not be compared at all); ``reason`` says why the check failed ("" when ok).
    """

    ok: bool
    max_abs_err: float
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        err = self.max_abs_err if math.isfinite(self.max_abs_err) else None
        return {"ok": self.ok, "max_abs_err": err, "reason": self.reason}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of an input spec's dtype name (``float32`` ...).

    Raises:
        SnapshotError: an unknown name.
    """
    try:
        return _DTYPES[name]
    except KeyError:
        raise SnapshotError(f"dtype {name!r} is not one of {sorted(_DTYPES)}") from None


def normalize_outputs(output: object) -> dict[str, torch.Tensor]:
    """A model's output as named tensors.

    A tensor becomes ``{"output": t}``; a tuple or list ``{"output0": .., "output1": ..}``; a
    dict of tensors (string keys) is kept as it is.

    Raises:
        SnapshotError: anything else (None, nested structures, non-tensor values), naming
            what was found.
    """
    if isinstance(output, torch.Tensor):
        return {"output": output}
    if isinstance(output, (tuple, list)) and output:
        if all(isinstance(t, torch.Tensor) for t in output):
            return {f"output{i}": t for i, t in enumerate(output)}
    elif isinstance(output, Mapping) and output:
        if all(isinstance(k, str) and k and isinstance(v, torch.Tensor) for k, v in output.items()):
            return dict(output)
    raise SnapshotError(
        f"model returned {_describe(output)}; a model must return a tensor, a non-empty "
        "tuple/list of tensors or a non-empty dict of str -> tensor: for nested outputs, "
        "choose the tensor outputs to answer with using --outputs (publish's outputs=...)"
    )


def _describe(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of [{', '.join(type(v).__name__ for v in value[:5])}]"
    if isinstance(value, Mapping):
        return f"a dict of {{{', '.join(f'{k!r}: {type(v).__name__}' for k, v in list(value.items())[:5])}}}"
    return f"a {type(value).__name__}"


def make_golden_inputs(
    input_specs: Sequence[InputSpec], seed: int = 0, batch: int = 2
) -> dict[str, torch.Tensor]:
    """Deterministic sample inputs for models published without golden inputs.

    Dynamic dimensions get small sizes (``batch`` for one named ``batch``, else
    :data:`DYNAMIC_DIM_SIZE`, never over the spec's ``dim_max``); floats are standard normal,
    ints are uniform over the spec's whole ``value_range`` (golden inputs are requests the
    spec allows: the health check runs them), bools and ints without a range lie in
    ``[0, 2)``. Publish refuses to generate goldens for an integer input without a
    ``value_range`` (see :func:`ungeneratable_inputs`): it asks for golden inputs instead.

    Args:
        input_specs: the model's declared inputs.
        seed: seeds a private generator (the global RNG is untouched).
        batch: the size of a ``batch`` dimension.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs: dict[str, torch.Tensor] = {}
    for spec in input_specs:
        shape = [d if isinstance(d, int) else _golden_size(d, spec, batch) for d in spec.shape]
        dtype = torch_dtype(spec.dtype)
        if dtype.is_floating_point:
            tensor = torch.randn(shape, generator=generator).to(dtype)
        else:
            # Over the whole declared range (ids across the vocabulary, not just 0 and 1).
            low, high = (0, 2) if spec.value_range is None else spec.value_range
            tensor = torch.randint(low, high, shape, generator=generator).to(dtype)
        inputs[spec.name] = tensor
    return inputs


def ungeneratable_inputs(input_specs: Sequence[InputSpec]) -> list[str]:
    """Integer inputs without a declared ``value_range``: generated values would be nonsense
    (ids 0 and 1), so publish asks for golden inputs for models that have them."""
    return [s.name for s in input_specs if s.dtype != "bool" and not torch_dtype(s.dtype).is_floating_point
            and s.value_range is None]


def _golden_size(dim: str, spec: InputSpec, batch: int) -> int:
    size = batch if dim == "batch" else DYNAMIC_DIM_SIZE
    return min(size, spec.dim_max.get(dim, size))


def write_golden(
    path: Path, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]
) -> None:
    """Write golden inputs and outputs into one safetensors file.

    Tensors are stored on CPU, contiguous, detached, named ``input.<name>``/``output.<name>``.
    """
    tensors = {f"{INPUT_PREFIX}{k}": _plain(v) for k, v in inputs.items()}
    tensors.update({f"{OUTPUT_PREFIX}{k}": _plain(v) for k, v in outputs.items()})
    save_file(tensors, str(path), metadata={"format": "warmstart.golden"})


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()


def load_golden(
    path: Path, golden_info: GoldenInfo
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read golden inputs and outputs, requiring exactly the names the manifest records.

    Returns:
        ``(inputs, outputs)``, each by name, on CPU.

    Raises:
        SafetensorsHeaderError: the file is unreadable as safetensors, has the wrong size, or
            its tensors disagree with ``golden_info`` (missing, extra or misnamed).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise SafetensorsHeaderError(f"golden file {path} cannot be read: {e}") from e
    if size != golden_info.size_bytes:
        raise SafetensorsHeaderError(
            f"golden file {path} is {size} bytes but the manifest records {golden_info.size_bytes}"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SafetensorsHeaderError(f"golden file {path} is not valid safetensors: {e}") from e
    inputs = {k[len(INPUT_PREFIX) :]: v for k, v in tensors.items() if k.startswith(INPUT_PREFIX)}
    outputs = {k[len(OUTPUT_PREFIX) :]: v for k, v in tensors.items() if k.startswith(OUTPUT_PREFIX)}
    stray = sorted(k for k in tensors if not k.startswith((INPUT_PREFIX, OUTPUT_PREFIX)))
    if stray or set(inputs) != set(golden_info.inputs) or set(outputs) != set(golden_info.outputs):
        raise SafetensorsHeaderError(
            f"golden file {path} holds inputs {sorted(inputs)} and outputs {sorted(outputs)}"
            f"{f' and stray tensors {stray}' if stray else ''}, but the manifest records inputs "
            f"{list(golden_info.inputs)} and outputs {list(golden_info.outputs)}"
        )
    return inputs, outputs


def compare_outputs(
    actual: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    rtol: float,
    atol: float,
) -> GoldenCheck:
    """Compare a model's outputs with golden ones.

    Passes when both have the same names, each output has the same shape and dtype, every
    actual value is finite, and ``|actual - expected| <= atol + rtol * |expected|`` everywhere
    (as :func:`torch.allclose`). Never raises for a mismatch: the reason says what differs.
    """
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing or extra:
        return GoldenCheck(False, math.inf, f"outputs differ: missing {missing}, unexpected {extra}")
    worst = 0.0
    for name in sorted(expected):
        a, e = actual[name], expected[name]
        if not isinstance(a, torch.Tensor):
            return GoldenCheck(False, math.inf, f"output {name!r} is a {type(a).__name__}, not a tensor")
        if tuple(a.shape) != tuple(e.shape):
            return GoldenCheck(
                False, math.inf, f"output {name!r} has shape {list(a.shape)}, expected {list(e.shape)}"
            )
        if a.dtype != e.dtype:
            return GoldenCheck(False, math.inf, f"output {name!r} has dtype {a.dtype}, expected {e.dtype}")
        a64 = a.detach().to("cpu", torch.float64)
        e64 = e.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(a64).all()):
            bad = int((~torch.isfinite(a64)).sum())
            return GoldenCheck(False, math.inf, f"output {name!r} has {bad} non-finite values (NaN or inf)")
        if a64.numel() == 0:
            continue
        diff = (a64 - e64).abs()
        err = float(diff.max())
        worst = max(worst, err)
        allowed = atol + rtol * e64.abs()
        if not bool((diff <= allowed).all()):
            return GoldenCheck(
                False,
                worst,
                f"output {name!r} differs from the golden output by up to {err:.3g} "
                f"(rtol={rtol}, atol={atol})",
            )
    return GoldenCheck(True, worst, "")


def read_input_file(path: Path) -> dict[str, torch.Tensor]:
    """Golden inputs from a safetensors file: tensors named ``<input>`` or ``input.<input>``.

    Raises:
        SafetensorsHeaderError: the file is not valid safetensors.
    """
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SafetensorsHeaderError(f"golden inputs file {path} is not valid safetensors: {e}") from e
    return {k[len(INPUT_PREFIX) :] if k.startswith(INPUT_PREFIX) else k: v for k, v in tensors.items()}
