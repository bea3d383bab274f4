"""The snapshot manifest: what one published model version is, as strict JSON.

``manifest.json`` is written last on publish, so a version without one does not exist. It is
data read from a bucket, so :func:`parse_manifest` trusts nothing: every field is checked for
presence, type and range, and unknown format versions are refused.

Format version 1::

    {
      "format": "warmstart.snapshot", "format_version": 1,
      "model": "short-form", "version": "v1", "created_at": "2026-11-27T00:00:00Z",
      "architecture": {"factory": "warmstart.snapshot.examples:build_recsys_model", "kwargs": {...}},
      "weights": {"file": "model.safetensors", "size_bytes": 123, "sha256": "<64 hex>",
                  "header_bytes": 456,
                  "tensors": [{"name": "w", "dtype": "F32", "shape": [2, 3],
                               "offsets": [0, 24]}]},
      "inputs": [{"name": "features", "dtype": "float32", "shape": ["batch", 64]}],
      "golden": {"file": "golden.safetensors", "size_bytes": 1, "sha256": "<64 hex>",
                 "inputs": ["features"], "outputs": ["output"], "rtol": 1e-4, "atol": 1e-5},
      "metadata": {}
    }

``offsets`` are relative to the start of the data section (after the 8-byte length and the
header), as in safetensors itself. Input shapes hold ints for fixed dimensions and strings
(names such as ``"batch"``) for dynamic ones.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from warmstart.infra.errors import ManifestError
from warmstart.snapshot.names import GOLDEN_FILE, WEIGHTS_FILE, validate_name

FORMAT = "warmstart.snapshot"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

#: safetensors dtype codes and their element sizes.
SAFETENSORS_DTYPES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip

#: dtypes an inference input may declare (torch names).
INPUT_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8",
                "uint8", "bool")  # fmt: skip

def tensor_nbytes(dtype: str, shape: tuple[int, ...] | list[int]) -> int:
    """Bytes a tensor of this safetensors dtype and shape occupies."""
    return math.prod(shape) * SAFETENSORS_DTYPES[dtype]


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.offsets[1] - self.offsets[0]


@dataclass(frozen=True)
class InputSpec:
    """One named input tensor. ``shape`` holds ints (fixed) or strings (dynamic, named)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class ArchitectureSpec:
    """How to build the module: ``factory`` is ``package.module:function``, called with kwargs."""

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightsInfo:
    file: str
    size_bytes: int
    sha256: str
    header_bytes: int
    tensors: tuple[TensorEntry, ...]


@dataclass(frozen=True)
class GoldenInfo:
    """Golden inputs and the outputs recorded at publish time, in one safetensors file.

    Tensors are named ``input.<name>`` and ``output.<name>`` inside the file.
    """

    file: str
    size_bytes: int
    sha256: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    rtol: float
    atol: float


@dataclass(frozen=True)
class Manifest:
    model: str
    version: str
    created_at: str
    architecture: ArchitectureSpec
    weights: WeightsInfo
    inputs: tuple[InputSpec, ...]
    golden: GoldenInfo
    metadata: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        ordered = {"format": FORMAT, "format_version": raw.pop("format_version")}
        ordered.update(raw)
        return json.loads(json.dumps(ordered))  # tuples -> lists, a plain JSON tree

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n").encode()

    def input_spec(self, name: str) -> InputSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)


# --- parsing --------------------------------------------------------------------------------


def _where(path: str) -> str:
    return f"manifest field {path!r}"


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    if key not in obj:
        raise ManifestError(f"{_where(path + key)} is missing; republish the snapshot")
    value = obj[key]
    # bool is an int in Python; never accept it where a number is meant.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ManifestError(f"{_where(path + key)} must be {kind}, got a boolean")
    if not isinstance(value, kind):
        raise ManifestError(f"{_where(path + key)} has type {type(value).__name__}, expected {kind}")
    return value


def _nonneg_int(obj: dict[str, Any], key: str, path: str) -> int:
    value = _get(obj, key, int, path)
    if value < 0:
        raise ManifestError(f"{_where(path + key)} must be >= 0, got {value}")
    return value


def _sha(obj: dict[str, Any], key: str, path: str) -> str:
    value = _get(obj, key, str, path)
    if not _SHA256.match(value):
        raise ManifestError(f"{_where(path + key)} must be 64 lowercase hex digits")
    return value


def _name_list(obj: dict[str, Any], key: str, path: str) -> tuple[str, ...]:
    values = _get(obj, key, list, path)
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ManifestError(f"{_where(path + key)} must be a non-empty list of names")
    if len(set(values)) != len(values):
        raise ManifestError(f"{_where(path + key)} lists a name twice")
    return tuple(values)


def _tensor(raw: Any, i: int) -> TensorEntry:
    path = f"weights.tensors[{i}]."
    if not isinstance(raw, dict):
        raise ManifestError(f"{_where(path[:-1])} must be an object")
    name = _get(raw, "name", str, path)
    dtype = _get(raw, "dtype", str, path)
    if dtype not in SAFETENSORS_DTYPES:
        raise ManifestError(f"{_where(path + 'dtype')} {dtype!r} is not a safetensors dtype")
    shape = _get(raw, "shape", list, path)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ManifestError(f"{_where(path + 'shape')} must be a list of non-negative ints")
    offsets = _get(raw, "offsets", list, path)
    if (
        len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise ManifestError(f"{_where(path + 'offsets')} must be [start, end] with 0 <= start <= end")
    if offsets[1] - offsets[0] != tensor_nbytes(dtype, shape):
        raise ManifestError(
            f"{_where(path[:-1])} ({name!r}): offsets span {offsets[1] - offsets[0]} bytes but "
            f"{dtype} {shape} needs {tensor_nbytes(dtype, shape)}"
        )
    return TensorEntry(name, dtype, tuple(shape), (offsets[0], offsets[1]))


def _input(raw: Any, i: int) -> InputSpec:
    path = f"inputs[{i}]."
    if not isinstance(raw, dict):
        raise ManifestError(f"{_where(path[:-1])} must be an object")
    name = _get(raw, "name", str, path)
    if not re.match(r"^[A-Za-z_]\w{0,63}$", name):
        raise ManifestError(f"{_where(path + 'name')} {name!r} must be an identifier")
    dtype = _get(raw, "dtype", str, path)
    if dtype not in INPUT_DTYPES:
        raise ManifestError(f"{_where(path + 'dtype')} {dtype!r} must be one of {INPUT_DTYPES}")
    shape = _get(raw, "shape", list, path)
    for d in shape:
        ok_int = isinstance(d, int) and not isinstance(d, bool) and d >= 1
        ok_dyn = isinstance(d, str) and re.match(r"^[A-Za-z_]\w{0,31}$", d)
        if not (ok_int or ok_dyn):
            raise ManifestError(
                f"{_where(path + 'shape')} entries must be positive ints or dimension names, got {d!r}"
            )
    return InputSpec(name, dtype, tuple(shape))


def parse_manifest(data: bytes | str | dict[str, Any]) -> Manifest:
    """Parse and validate a manifest.

    Args:
        data: the bytes of ``manifest.json`` (or its already-decoded JSON object).

    Returns:
        The validated :class:`Manifest`.

    Raises:
        ManifestError: not JSON, too large, an unknown format or version, or any field missing,
            of the wrong type or out of range; the message names the field.
        InvalidNameError: the model name or version is not a safe name.
    """
    if isinstance(data, (bytes, str)):
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} limit")
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ManifestError(f"manifest is not valid JSON: {e}") from e
    else:
        obj = data
    if not isinstance(obj, dict):
        raise ManifestError("manifest must be a JSON object")
    if obj.get("format") != FORMAT:
        raise ManifestError(f"manifest 'format' is {obj.get('format')!r}, expected {FORMAT!r}")
    version_no = _get(obj, "format_version", int, "")
    if version_no != FORMAT_VERSION:
        raise ManifestError(
            f"manifest format_version {version_no} is not supported (this warmstart reads "
            f"{FORMAT_VERSION}); upgrade warmstart or republish the snapshot"
        )

    model = validate_name(_get(obj, "model", str, ""), "model name")
    version = validate_name(_get(obj, "version", str, ""), "version")
    created_at = _get(obj, "created_at", str, "")

    arch = _get(obj, "architecture", dict, "")
    factory = _get(arch, "factory", str, "architecture.")
    if not _FACTORY.match(factory):
        raise ManifestError(f"{_where('architecture.factory')} {factory!r} must be 'package.module:function'")
    kwargs = arch.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ManifestError(f"{_where('architecture.kwargs')} must be an object")

    w = _get(obj, "weights", dict, "")
    if _get(w, "file", str, "weights.") != WEIGHTS_FILE:
        raise ManifestError(f"{_where('weights.file')} must be {WEIGHTS_FILE!r}")
    tensors_raw = _get(w, "tensors", list, "weights.")
    tensors = tuple(_tensor(t, i) for i, t in enumerate(tensors_raw))
    if len({t.name for t in tensors}) != len(tensors):
        raise ManifestError(f"{_where('weights.tensors')} names a tensor twice")
    weights = WeightsInfo(
        file=WEIGHTS_FILE,
        size_bytes=_nonneg_int(w, "size_bytes", "weights."),
        sha256=_sha(w, "sha256", "weights."),
        header_bytes=_nonneg_int(w, "header_bytes", "weights."),
        tensors=tensors,
    )
    data_bytes = weights.size_bytes - 8 - weights.header_bytes
    for t in tensors:
        if t.offsets[1] > data_bytes:
            raise ManifestError(
                f"tensor {t.name!r} ends at byte {t.offsets[1]} of the data section, which is "
                f"only {data_bytes} bytes long"
            )

    inputs_raw = _get(obj, "inputs", list, "")
    if not inputs_raw:
        raise ManifestError(f"{_where('inputs')} must declare at least one input tensor")
    inputs = tuple(_input(s, i) for i, s in enumerate(inputs_raw))
    if len({s.name for s in inputs}) != len(inputs):
        raise ManifestError(f"{_where('inputs')} names an input twice")

    g = _get(obj, "golden", dict, "")
    if _get(g, "file", str, "golden.") != GOLDEN_FILE:
        raise ManifestError(f"{_where('golden.file')} must be {GOLDEN_FILE!r}")
    golden = GoldenInfo(
        file=GOLDEN_FILE,
        size_bytes=_nonneg_int(g, "size_bytes", "golden."),
        sha256=_sha(g, "sha256", "golden."),
        inputs=_name_list(g, "inputs", "golden."),
        outputs=_name_list(g, "outputs", "golden."),
        rtol=float(_get(g, "rtol", (int, float), "golden.")),
        atol=float(_get(g, "atol", (int, float), "golden.")),
    )
    if set(golden.inputs) != {s.name for s in inputs}:
        raise ManifestError(
            f"{_where('golden.inputs')} {list(golden.inputs)} must name exactly the declared "
            f"inputs {[s.name for s in inputs]}"
        )
    if golden.rtol < 0 or golden.atol < 0:
        raise ManifestError(f"{_where('golden.rtol/atol')} must be >= 0")
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ManifestError(f"{_where('metadata')} must be an object")
    return Manifest(
        model=model,
        version=version,
        created_at=created_at,
        architecture=ArchitectureSpec(factory, dict(kwargs)),
        weights=weights,
        inputs=inputs,
        golden=golden,
        metadata=dict(metadata),
    )
