"""The JSON wire format of inference inputs and outputs, and its validation.

A tensor travels as ``{"dtype": "float32", "shape": [2, 64], "data": "<base64>"}`` where
``data`` is the little-endian bytes of the tensor in row-major order; plain nested lists of
numbers are accepted too and take the dtype the model's input spec declares. A request's
inputs are a JSON object mapping input names to tensors. Everything here is pure: it checks
what a client sent against the model's input spec before any of it reaches the model.

Every size is checked before the work it bounds: a shape's rank and each of its dimensions
before their product, the product (the declared bytes) against the byte budget before the
data is looked at, the length of the base64 text before it is decoded, and the number of
elements of a nested list (walked level by level, never recursively) before ``torch.tensor``.
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
#: The most dimensions a tensor may have on the wire (torch's own limit).
MAX_RANK = 64
_TOO_LARGE_HINT = "send smaller batches or raise WARMSTART_MAX_PAYLOAD_BYTES on the workers"


def itemsize(dtype_name: str) -> int:
    return int(np.dtype(DTYPES[dtype_name][1]).itemsize)


def base64_length(nbytes: int) -> int:
    """Characters of padded base64 text that encode ``nbytes`` bytes."""
    return 4 * math.ceil(nbytes / 3)


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


# --- shapes and sizes, checked before anything is decoded or multiplied ----------------------


def _too_large(name: str, what: str, max_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"input {name!r}: {what}; the inputs may total {max_bytes} bytes: {_TOO_LARGE_HINT}")


def declared_shape(name: str, shape: object) -> list[int]:
    """A wire tensor's ``shape``, checked: a list of at most :data:`MAX_RANK` non-negative ints.

    Raises:
        InvalidInputError: anything else (the rank is checked before any dimension is read).
    """
    if not isinstance(shape, list):
        raise InvalidInputError(f"input {name!r}: shape must be a list of non-negative ints")
    if len(shape) > MAX_RANK:
        raise InvalidInputError(f"input {name!r}: shape has {len(shape)} dimensions; at most {MAX_RANK} are allowed")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInputError(f"input {name!r}: shape must be a list of non-negative ints")
    return shape


def declared_nbytes(name: str, dtype_name: str, shape: list[int], max_bytes: int, total_limit: int | None = None) -> int:
    """Bytes of a tensor of ``dtype_name`` and a checked ``shape``, refused above ``max_bytes``.

    Each dimension is compared with the bound before the product is taken, so a huge or
    adversarial shape costs nothing. ``total_limit`` is the limit named in the message (the
    whole request's, when ``max_bytes`` is what is left of it).

    Raises:
        PayloadTooLargeError: the tensor would be larger than ``max_bytes``.
    """
    limit = max_bytes if total_limit is None else total_limit
    size = itemsize(dtype_name)
    if 0 in shape:
        return 0
    max_elements = max_bytes // size
    for dim in shape:
        if dim > max_elements:
            raise _too_large(name, f"a dimension of {dim} {dtype_name} values is larger than the inputs may be", limit)
    nbytes = math.prod(shape) * size  # at most MAX_RANK factors, each bounded
    if nbytes > max_bytes:
        raise _too_large(name, f"{dtype_name} {shape} is {nbytes} bytes", limit)
    return nbytes


def nested_list_shape(name: str, value: list[Any], rank: int, max_elements: int, max_bytes: int) -> list[int]:
    """The shape of a rectangular nested list, walked level by level (no recursion), at most
    ``rank`` deep; the number of elements is bounded before each level is visited.

    Raises:
        InvalidInputError: not rectangular, or nested deeper than ``rank``.
        PayloadTooLargeError: more than ``max_elements`` elements.
    """
    shape: list[int] = []
    level: list[Any] = [value]  # the lists at depth len(shape)
    while True:
        size = len(level[0])
        if len(level) * size > max_elements:  # the next level's length, before building it
            raise _too_large(name, f"the nested list holds more than {max_elements} values", max_bytes)
        if not all(isinstance(node, list) and len(node) == size for node in level):
            raise InvalidInputError(
                f"input {name!r}: not a rectangular nested list of numbers (the lists at depth "
                f"{len(shape)} differ in length or depth); send " + '{"dtype", "shape", "data"} instead'
            )
        shape.append(size)
        if size == 0 or not isinstance(level[0][0], list):
            return shape  # the values themselves are checked by torch.tensor
        if len(shape) >= rank:
            raise InvalidInputError(f"input {name!r}: the nested list is deeper than the model's {rank} dimensions")
        level = [item for node in level for item in node]


def check_shape(name: str, shape: list[int], spec: InputSpec, dims: dict[str, tuple[int, str]]) -> None:
    """A declared shape against the input's spec: rank, fixed sizes, named dynamic sizes
    (bounded by the spec's ``dim_max``, equal across inputs, recorded in ``dims``), non-empty.

    Raises:
        InvalidInputError: naming the input, the dimension and what the model takes.
    """
    takes = list(spec.shape)
    if len(shape) != len(spec.shape):
        raise InvalidInputError(f"input {name!r}: {len(shape)} dimensions {shape}, the model takes {takes}")
    dim_max: Mapping[str, int] = getattr(spec, "dim_max", None) or {}
    for axis, (got, want) in enumerate(zip(shape, spec.shape)):
        if isinstance(want, int) and got != want:
            raise InvalidInputError(f"input {name!r}: size {got} at dimension {axis}, the model takes {takes}")
        if isinstance(want, str):
            bound = dim_max.get(want)
            if bound is not None and got > bound:
                raise InvalidInputError(
                    f"input {name!r}: dimension {want!r} is {got}, the model takes at most {bound}; "
                    "split the request"
                )
            seen = dims.setdefault(want, (got, name))
            if seen[0] != got:
                raise InvalidInputError(f"dimension {want!r} is {seen[0]} in input {seen[1]!r} but {got} in {name!r}")
        if got == 0:
            raise InvalidInputError(f"input {name!r} is empty along dimension {axis}")


def check_value_range(name: str, tensor: torch.Tensor, spec: InputSpec) -> None:
    """Every value of ``tensor`` inside the spec's ``value_range`` ``[low, high)``, when it has one.

    Raises:
        InvalidInputError: naming a value outside (a NaN, else the lowest or highest), its
            position and the range.
    """
    value_range = getattr(spec, "value_range", None)
    if value_range is None or tensor.numel() == 0:
        return
    low, high = value_range
    values = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
    lowest, highest = (v.item() for v in torch.aminmax(values))
    if lowest >= low and highest < high:  # False for NaN too
        return
    flat = values.reshape(-1)
    nan = torch.isnan(flat) if flat.is_floating_point() else None
    if nan is not None and bool(nan.any()):
        index = int(nan.nonzero()[0])
    else:
        index = int(torch.argmin(flat)) if lowest < low else int(torch.argmax(flat))
    position = [int(i) for i in np.unravel_index(index, tuple(tensor.shape))]
    raise InvalidInputError(
        f"input {name!r}: value {flat[index].item()} at {position} is outside [{low}, {high}), "
        "the values the model takes (an id past the vocabulary, or a negative one?)"
    )


# --- decoding ----------------------------------------------------------------------------------


def _encoded_shape(name: str, value: dict[str, Any], spec: InputSpec | None) -> tuple[str, list[int]]:
    """The dtype name and the checked shape a wire object declares (its data not looked at)."""
    dtype_name = value.get("dtype")
    if dtype_name not in DTYPES:
        raise InvalidInputError(f"input {name!r}: dtype {dtype_name!r} is not one of {sorted(DTYPES)}")
    if spec is not None and dtype_name != spec.dtype:
        raise InvalidInputError(f"input {name!r}: dtype {dtype_name} but the model takes {spec.dtype}")
    return dtype_name, declared_shape(name, value.get("shape"))


def _decode_data(name: str, dtype_name: str, shape: list[int], nbytes: int, data: object) -> torch.Tensor:
    """The tensor a wire object's base64 ``data`` holds, its length checked before decoding."""
    if not isinstance(data, str):
        raise InvalidInputError(f"input {name!r}: data must be a base64 string")
    if len(data) != base64_length(nbytes):  # the length says it all: no need to decode
        carried = len(data) * 3 // 4 - data[-2:].count("=")
        raise InvalidInputError(
            f"input {name!r}: {carried} bytes of data (in {len(data)} characters of base64) but "
            f"{dtype_name} {shape} needs {nbytes}"
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInputError(f"input {name!r}: data is not valid base64") from e
    if len(raw) != nbytes:  # the right length of text, padded short
        raise InvalidInputError(f"input {name!r}: {len(raw)} bytes of data but {dtype_name} {shape} needs {nbytes}")
    array = np.frombuffer(raw, dtype=DTYPES[dtype_name][1]).reshape(shape)
    tensor = torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))
    return tensor.view(torch.bfloat16) if dtype_name == "bfloat16" else tensor


def _tensor_from_list(name: str, value: list[Any], dtype_name: str) -> torch.Tensor:
    try:
        return torch.tensor(value, dtype=DTYPES[dtype_name][0])
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise InvalidInputError(
            f"input {name!r}: not a rectangular nested list of numbers ({e}); send "
            '{"dtype", "shape", "data"} instead'
        ) from e


def decode_inputs(
    payload: object, specs: tuple[InputSpec, ...], *, max_bytes: int
) -> dict[str, torch.Tensor]:
    """Decode and check a request's inputs against the model's input spec.

    Every input's shape and size is checked first (from the declared shapes and the list
    lengths); only then is any data decoded.

    Args:
        payload: the decoded JSON ``inputs`` object.
        specs: the model's declared inputs (from its manifest).
        max_bytes: the largest total tensor size accepted.

    Returns:
        Tensors by input name, exactly the declared names.

    Raises:
        InvalidInputError: not an object, missing or unexpected names, a wrong dtype, a shape
            that disagrees with the spec (rank, fixed sizes, named dynamic sizes that must agree
            across inputs and stay within ``dim_max``), values outside ``value_range``,
            malformed data.
        PayloadTooLargeError: the tensors add up to more than ``max_bytes``.
    """
    if not isinstance(payload, dict):
        raise InvalidInputError("inputs must be a JSON object mapping input names to tensors")
    by_name = {spec.name: spec for spec in specs}
    missing = sorted(set(by_name) - set(payload))
    extra = sorted(set(payload) - set(by_name))
    if missing or extra:
        raise InvalidInputError(
            f"inputs do not match the model: missing {missing}, unexpected {extra[:20]}; the model "
            f"takes {[f'{s.name}: {s.dtype} {list(s.shape)}' for s in specs]}"
        )
    dims: dict[str, tuple[int, str]] = {}
    left = max_bytes
    checked: list[tuple[str, InputSpec, list[int], int]] = []
    for name, spec in by_name.items():  # 1. shapes and sizes, nothing decoded
        value = payload[name]
        if isinstance(value, dict):
            _, shape = _encoded_shape(name, value, spec)
        elif isinstance(value, list):
            shape = nested_list_shape(name, value, len(spec.shape), left // itemsize(spec.dtype), max_bytes)
        else:
            raise InvalidInputError(f"input {name!r} must be a tensor object or a nested list")
        check_shape(name, shape, spec, dims)
        nbytes = declared_nbytes(name, spec.dtype, shape, left, max_bytes)
        left -= nbytes
        checked.append((name, spec, shape, nbytes))
    tensors: dict[str, torch.Tensor] = {}
    for name, spec, shape, nbytes in checked:  # 2. data
        value = payload[name]
        if isinstance(value, dict):
            tensor = _decode_data(name, spec.dtype, shape, nbytes, value.get("data"))
        else:
            tensor = _tensor_from_list(name, value, spec.dtype)
        check_value_range(name, tensor, spec)
        tensors[name] = tensor
    return tensors


def input_nbytes(name: str, value: object, max_bytes: int) -> int | None:
    """Tensor bytes an input will carry, as a client can tell before encoding it: a tensor's,
    or a wire object's declared dtype × shape (its data not decoded); None for a nested list,
    whose dtype only the model's spec gives.

    Raises:
        InvalidInputError: a wire object with an unknown dtype or a malformed shape.
        PayloadTooLargeError: the input alone is over ``max_bytes``.
    """
    if isinstance(value, torch.Tensor):
        nbytes = value.numel() * value.element_size()
        if nbytes > max_bytes:
            raise _too_large(name, f"{value.dtype} {list(value.shape)} is {nbytes} bytes", max_bytes)
        return nbytes
    if isinstance(value, dict):
        dtype_name = value.get("dtype")
        if dtype_name not in DTYPES:
            raise InvalidInputError(f"input {name!r}: dtype {dtype_name!r} is not one of {sorted(DTYPES)}")
        return declared_nbytes(name, dtype_name, declared_shape(name, value.get("shape")), max_bytes)
    return None


def check_finite(outputs: Mapping[str, torch.Tensor], model: str) -> None:
    """Raises NonFiniteOutputError when a floating-point output holds NaN or infinity."""
    for name, tensor in outputs.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteOutputError(
                f"model {model!r} produced non-finite values in output {name!r}; the request "
                "was not answered with them. The model is being health-checked"
            )


def decode_outputs(payload: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Decode a worker's encoded outputs on the client side (trusted but still checked: each
    tensor's declared size must match its data, which bounds it)."""
    decoded = {}
    for name, value in payload.items():
        if not isinstance(value, dict) or not isinstance(value.get("data"), str):
            raise InvalidInputError(f"output {name!r} is not a tensor object")
        dtype_name, shape = _encoded_shape(name, value, None)
        bound = len(value["data"]) // 4 * 3
        nbytes = declared_nbytes(name, dtype_name, shape, bound)
        decoded[name] = _decode_data(name, dtype_name, shape, nbytes, value["data"])
    return decoded
