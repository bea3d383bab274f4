"""The JSON wire format of inference inputs and outputs, and its validation.

A tensor travels as ``{"dtype": "float32", "shape": [2, 64], "data": "<base64>"}`` where
``data`` is the little-endian bytes of the tensor in row-major order; plain nested lists of
numbers are accepted too and take the dtype the model's input spec declares. A request's
inputs are a JSON object mapping input names to tensors. Everything here is pure: it checks
what a client sent against the model's input spec before any of it reaches the model.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from warmstart.infra.errors import InvalidInputError, NonFiniteOutputError, PayloadTooLargeError
from warmstart.snapshot.manifest import InputSpec

#: torch dtypes by wire name, and the numpy dtype of their little-endian bytes.
DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "float32": (torch.float32, "<f4"),
    "float16": (torch.float16, "<f2"),
    "float64": (torch.float64, "<f8"),
    "bfloat16": (torch.bfloat16, "<u2"),  # numpy has no bfloat16: move the raw 16-bit words
    "int64": (torch.int64, "<i8"),
    "int32": (torch.int32, "<i4"),
    "int16": (torch.int16, "<i2"),
    "int8": (torch.int8, "i1"),
    "uint8": (torch.uint8, "u1"),
    "bool": (torch.bool, "?"),
}
_NAMES_BY_DTYPE = {dtype: name for name, (dtype, _) in DTYPES.items()}


def encode_tensor(tensor: torch.Tensor) -> dict[str, Any]:
    """A tensor as its JSON wire form (dtype, shape, base64 little-endian bytes)."""
    name = _NAMES_BY_DTYPE.get(tensor.dtype)
    if name is None:
        raise InvalidInputError(f"dtype {tensor.dtype} cannot travel; use one of {sorted(DTYPES)}")
    flat = tensor.detach().to("cpu").contiguous()
    if name == "bfloat16":
        flat = flat.view(torch.int16)
    array = flat.numpy().astype(DTYPES[name][1], copy=False)
    return {"dtype": name, "shape": list(tensor.shape), "data": base64.b64encode(array.tobytes()).decode()}


def encode_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {name: encode_tensor(t) for name, t in tensors.items()}


def _decode_encoded(name: str, value: dict[str, Any], spec: InputSpec | None) -> torch.Tensor:
    dtype_name, shape, data = value.get("dtype"), value.get("shape"), value.get("data")
    if dtype_name not in DTYPES:
        raise InvalidInputError(f"input {name!r}: dtype {dtype_name!r} is not one of {sorted(DTYPES)}")
    if spec is not None and dtype_name != spec.dtype:
        raise InvalidInputError(f"input {name!r}: dtype {dtype_name} but the model takes {spec.dtype}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInputError(f"input {name!r}: shape must be a list of non-negative ints")
    if not isinstance(data, str):
        raise InvalidInputError(f"input {name!r}: data must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInputError(f"input {name!r}: data is not valid base64") from e
    torch_dtype, np_dtype = DTYPES[dtype_name]
    expected = math.prod(shape) * np.dtype(np_dtype).itemsize
    if len(raw) != expected:
        raise InvalidInputError(
            f"input {name!r}: {len(raw)} bytes of data but {dtype_name} {shape} needs {expected}"
        )
    array = np.frombuffer(raw, dtype=np_dtype).reshape(shape)
    tensor = torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))
    return tensor.view(torch.bfloat16) if dtype_name == "bfloat16" else tensor


def _decode_list(name: str, value: list[Any], spec: InputSpec | None) -> torch.Tensor:
    if spec is None:
        raise InvalidInputError(f"input {name!r}: a plain list needs the model's input spec")
    torch_dtype, _ = DTYPES[spec.dtype]
    try:
        tensor = torch.tensor(value, dtype=torch_dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise InvalidInputError(
            f"input {name!r}: not a rectangular nested list of numbers ({e}); send "
            '{"dtype", "shape", "data"} instead'
        ) from e
    return tensor


def decode_inputs(
    payload: object, specs: tuple[InputSpec, ...], *, max_bytes: int
) -> dict[str, torch.Tensor]:
    """Decode and check a request's inputs against the model's input spec.

    Args:
        payload: the decoded JSON ``inputs`` object.
        specs: the model's declared inputs (from its manifest).
        max_bytes: the largest total tensor size accepted.

    Returns:
        Tensors by input name, exactly the declared names.

    Raises:
        InvalidInputError: not an object, missing or unexpected names, a wrong dtype, a shape
            that disagrees with the spec (fixed sizes, and named dynamic sizes that must agree
            across inputs), malformed data.
        PayloadTooLargeError: the tensors add up to more than ``max_bytes``.
    """
    if not isinstance(payload, dict):
        raise InvalidInputError("inputs must be a JSON object mapping input names to tensors")
    by_name = {spec.name: spec for spec in specs}
    missing = sorted(set(by_name) - set(payload))
    extra = sorted(set(payload) - set(by_name))
    if missing or extra:
        raise InvalidInputError(
            f"inputs do not match the model: missing {missing}, unexpected {extra}; the model "
            f"takes {[f'{s.name}: {s.dtype} {list(s.shape)}' for s in specs]}"
        )
    tensors: dict[str, torch.Tensor] = {}
    total = 0
    dims: dict[str, tuple[int, str]] = {}
    for name, spec in by_name.items():
        value = payload[name]
        if isinstance(value, dict):
            tensor = _decode_encoded(name, value, spec)
        elif isinstance(value, list):
            tensor = _decode_list(name, value, spec)
        else:
            raise InvalidInputError(f"input {name!r} must be a tensor object or a nested list")
        total += tensor.numel() * tensor.element_size()
        if total > max_bytes:
            raise PayloadTooLargeError(
                f"inputs exceed {max_bytes} bytes; send smaller batches or raise "
                "WARMSTART_MAX_PAYLOAD_BYTES on the workers"
            )
        if tensor.dim() != len(spec.shape):
            raise InvalidInputError(
                f"input {name!r}: {tensor.dim()} dimensions {list(tensor.shape)}, the model "
                f"takes {list(spec.shape)}"
            )
        for axis, (got, want) in enumerate(zip(tensor.shape, spec.shape)):
            if isinstance(want, int) and got != want:
                raise InvalidInputError(
                    f"input {name!r}: size {got} at dimension {axis}, the model takes "
                    f"{list(spec.shape)}"
                )
            if isinstance(want, str):
                seen = dims.setdefault(want, (got, name))
                if seen[0] != got:
                    raise InvalidInputError(
                        f"dimension {want!r} is {seen[0]} in input {seen[1]!r} but {got} in {name!r}"
                    )
            if got == 0:
                raise InvalidInputError(f"input {name!r} is empty along dimension {axis}")
        tensors[name] = tensor
    return tensors


def check_payload_size(encoded: str | bytes | int, max_bytes: int) -> None:
    """Refuse an encoded request before parsing it when it is far too large.

    Args:
        encoded: the encoded request, or its length in bytes.

    Raises:
        PayloadTooLargeError: the encoded JSON is over twice ``max_bytes`` (base64 adds a third).
    """
    size = encoded if isinstance(encoded, int) else len(encoded)
    if size > 2 * max_bytes:
        raise PayloadTooLargeError(
            f"request is {size} bytes encoded, over the limit for {max_bytes} bytes of "
            "tensors; send smaller batches or raise WARMSTART_MAX_PAYLOAD_BYTES"
        )


def check_finite(outputs: Mapping[str, torch.Tensor], model: str) -> None:
    """Raises NonFiniteOutputError when a floating-point output holds NaN or infinity."""
    for name, tensor in outputs.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteOutputError(
                f"model {model!r} produced non-finite values in output {name!r}; the request "
                "was not answered with them. The model is being health-checked"
            )


def decode_outputs(payload: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Decode a worker's encoded outputs on the client side (trusted but still checked)."""
    return {name: _decode_encoded(name, value, None) for name, value in payload.items()}
