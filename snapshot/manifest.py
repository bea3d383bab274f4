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
header), as in safetensors itself.

Format version 2 is a *sharded* snapshot (a Hugging Face folder with
``model.safetensors.index.json``): the same document, but ``weights`` lists each shard file,
published unchanged under its own name, with its own size, sha256, header length and tensors
(offsets relative to that file's data section)::

      "weights": {"size_bytes": 300, "sha256": "<64 hex: sha256 of the shard list>",
                  "shards": [{"file": "model-00001-of-00002.safetensors", "size_bytes": 160,
                              "sha256": "<64 hex>", "header_bytes": 120,
                              "tensors": [{"name": "w", "dtype": "F32", "shape": [2, 3],
                                           "offsets": [0, 24]}]},
                             {"file": "model-00002-of-00002.safetensors", ...}]},

``size_bytes`` is the sum of the shards' and ``sha256`` is :func:`shards_digest` of the list
(what ``sha256sum`` prints for the shards, hashed again): both are checked. A tensor name
appears in one shard only. Single-file snapshots are still written as format version 1, byte
for byte as before; a reader that knows only version 1 refuses a sharded manifest with "upgrade
warmstart" instead of misreading it. Input shapes hold ints for fixed dimensions and strings
(names such as ``"batch"``) for dynamic ones. An input may also declare ``value_range``
(``[low, high)``, integer dtypes only) and ``dim_max`` (an upper bound per dynamic dimension,
e.g. ``{"seq": 512}``); both are written only when set.

Every size is bounded before the work it bounds: the document's bytes and nesting depth
before it is decoded, list lengths before their entries are read, a shape's rank and each of
its dimensions before any product of them is taken (a million-dimension shape made
``math.prod`` run for minutes).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from warmstart.infra.errors import ManifestError
from warmstart.snapshot.jsonlimits import MAX_JSON_DEPTH, check_tree, load_json, short
from warmstart.snapshot.names import GOLDEN_FILE, WEIGHTS_FILE, validate_name

FORMAT = "warmstart.snapshot"
FORMAT_VERSION = 1
#: the format version of a sharded snapshot (``weights.shards``); single files stay at 1.
SHARDED_FORMAT_VERSION = 2
FORMAT_VERSIONS = (FORMAT_VERSION, SHARDED_FORMAT_VERSION)
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

# Limits on what a manifest (or a safetensors header) may describe. Far above any real model,
# and low enough that checking a hostile document costs milliseconds, not minutes.
MAX_RANK = 64  #: dimensions of one tensor or input
MAX_DIM = 2**48  #: elements along one dimension
MAX_TENSORS = 262_144  #: tensors in one weights file, and in all the shards of a snapshot
#: shard files of one sharded snapshot (the largest public checkpoints have a few hundred)
MAX_SHARDS = 1024
MAX_INPUTS = 256  #: declared inputs of a model
MAX_OUTPUTS = 4096  #: recorded golden outputs
MAX_TENSOR_NAME_LENGTH = 1024  #: characters of a tensor or output name
MAX_CREATED_AT_LENGTH = 64
MAX_FREEFORM_DEPTH = 16  #: nesting of architecture.kwargs and metadata
MAX_FREEFORM_ITEMS = 100_000  #: values in architecture.kwargs, and in metadata

#: The one rule by which a file's tensor may be left unloaded: it is a *non-persistent buffer*
#: of the built module (computed in ``__init__``, such as ``embeddings.position_ids`` in
#: ``transformers`` BERT models, which older versions saved). Restore checks that each such key
#: really is one, and loads everything else strictly.
SKIP_RULE = "non_persistent_buffers"

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

#: integer input dtypes and the values they hold, ``[low, high)``.
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "int64": (-(2**63), 2**63), "int32": (-(2**31), 2**31), "int16": (-(2**15), 2**15),
    "int8": (-(2**7), 2**7), "uint8": (0, 2**8),
}  # fmt: skip


# Always matched with ``fullmatch``: ``$`` would also accept a trailing newline.
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_INPUT_NAME = re.compile(r"[A-Za-z_]\w{0,63}")
_DIM_NAME = re.compile(r"[A-Za-z_]\w{0,31}")
#: a shard's file name, as it is in the folder, the store and the cache entry.
_SHARD_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,114}\.safetensors")


def shard_file_problem(name: object) -> str | None:
    """Why ``name`` cannot be a shard's file name (None when it can).

    A shard keeps its name in the store and in the cache entry, so it must be one plain path
    segment: letters, digits, ``.``, ``_``, ``-``, ending in ``.safetensors``, at most 127
    characters, no ``..``, and not a name the snapshot already uses (``model.safetensors``,
    ``golden.safetensors``).
    """
    if not isinstance(name, str):
        return f"must be a file name string, got {type(name).__name__}"
    if ".." in name or not _SHARD_FILE.fullmatch(name):
        return (
            f"is {short(name)}, not a plain shard file name (letters, digits, '.', '_', '-', "
            "ending in '.safetensors', at most 127 characters, no '/' and no '..')"
        )
    if name in (WEIGHTS_FILE, GOLDEN_FILE):
        return f"is {name!r}, a name reserved for a snapshot's own files"
    return None


def shape_problem(shape: object, dynamic: bool = False) -> str | None:
    """What is wrong with ``shape``, or None when it is a list of at most :data:`MAX_RANK`
    ints in ``[0, MAX_DIM]`` (with ``dynamic``: ints in ``[1, MAX_DIM]`` or dimension names).

    The rank is checked first, before any entry is looked at, and nothing is multiplied.
    """
    if not isinstance(shape, (list, tuple)):
        return f"must be a list, got {type(shape).__name__}"
    if len(shape) > MAX_RANK:
        return f"has {len(shape)} dimensions, over the limit of {MAX_RANK}"
    kind = "positive ints or dimension names" if dynamic else "non-negative ints"
    for d in shape:
        if isinstance(d, int) and not isinstance(d, bool):
            if d > MAX_DIM:
                return f"dimension {short(d)} is over the limit of {MAX_DIM}"
            if d < (1 if dynamic else 0):
                return f"entries must be {kind}, got {d}"
        elif not (dynamic and isinstance(d, str) and _DIM_NAME.fullmatch(d)):
            return f"entries must be {kind}, got {short(d)}"
    return None


def tensor_nbytes(dtype: str, shape: tuple[int, ...] | list[int]) -> int:
    """Bytes a tensor of this safetensors dtype and shape occupies.

    Raises:
        ValueError: ``shape`` fails :func:`shape_problem` (callers check it first and raise
            their own typed error; this guards the product against unchecked shapes).
    """
    problem = shape_problem(shape)
    if problem is not None:
        raise ValueError(f"shape {problem}")
    return math.prod(shape) * SAFETENSORS_DTYPES[dtype]


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
    """One named input tensor. ``shape`` holds ints (fixed) or strings (dynamic, named).

    ``value_range`` is ``(low, high)``: every value must satisfy ``low <= v < high`` (integer
    dtypes only; None: any value of the dtype). ``dim_max`` bounds dynamic dimensions by name
    (``{"seq": 512}``; only names in ``shape``). Both are serialised only when set.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    value_range: tuple[int, int] | None = None
    # Not hashed (a dict cannot be), still compared: equal specs keep equal hashes.
    dim_max: dict[str, int] = field(default_factory=dict, hash=False)
    #: the value that fills this input where a batch pads it (e.g. 0 for ``attention_mask``);
    #: None: requests whose other dimensions differ are not batched together.
    pad: int | float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form; limits that are not set are left out."""
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.value_range is not None:
            out["value_range"] = list(self.value_range)
        if self.dim_max:
            out["dim_max"] = dict(self.dim_max)
        if self.pad is not None:
            out["pad"] = self.pad
        return out


@dataclass(frozen=True)
class ArchitectureSpec:
    """How to build the module: ``factory`` is ``package.module:function``, called with kwargs."""

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightsFile:
    """One safetensors file of a snapshot: the single ``model.safetensors``, or one shard."""

    file: str
    size_bytes: int
    sha256: str
    header_bytes: int
    tensors: tuple[TensorEntry, ...]


def shards_digest(shards: "tuple[WeightsFile, ...] | list[WeightsFile]") -> str:
    """The sha256 that identifies a list of shards: of the lines ``<sha256>  <file>\n`` that
    ``sha256sum`` prints for them, in order (``sha256sum model-*.safetensors | sha256sum``)."""
    listing = "".join(f"{s.sha256}  {s.file}\n" for s in shards)
    return hashlib.sha256(listing.encode()).hexdigest()


@dataclass(frozen=True)
class WeightsInfo:
    """The weights of a snapshot.

    A single file (format version 1): ``file`` is ``model.safetensors`` and ``shards`` is
    empty. A sharded snapshot (format version 2; build it with :meth:`from_shards`): ``shards``
    lists the files; ``file`` is empty, ``header_bytes`` 0, ``size_bytes`` their sum,
    ``sha256`` their :func:`shards_digest`, and ``tensors`` the union of theirs (each entry's
    offsets are relative to its own shard). :attr:`files` gives the files either way.
    """

    file: str
    size_bytes: int
    sha256: str
    header_bytes: int
    tensors: tuple[TensorEntry, ...]
    shards: tuple[WeightsFile, ...] = ()

    @classmethod
    def from_shards(cls, shards: "tuple[WeightsFile, ...] | list[WeightsFile]") -> "WeightsInfo":
        shards = tuple(shards)
        return cls(
            file="", size_bytes=sum(s.size_bytes for s in shards), sha256=shards_digest(shards),
            header_bytes=0, tensors=tuple(t for s in shards for t in s.tensors), shards=shards,
        )  # fmt: skip

    @property
    def files(self) -> tuple[WeightsFile, ...]:
        """The snapshot's weight files, in order: its shards, or its one file."""
        if self.shards:
            return self.shards
        return (WeightsFile(self.file, self.size_bytes, self.sha256, self.header_bytes, self.tensors),)


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
    #: the outputs the model answers with (empty: all of them); see ``snapshot/outputs.py``.
    outputs: tuple[str, ...] = ()
    #: tensors of the file the module does not load, and why (rule :data:`SKIP_RULE`).
    skip_keys: tuple[str, ...] = ()
    #: dynamic batching: ``{"max_batch": n, "max_wait_ms": t}`` (empty: one request per forward).
    batching: dict[str, Any] = field(default_factory=dict)
    #: ``torch.compile`` on the worker: ``{"backend": b, "mode": m}`` (empty: run eagerly).
    compile: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weights.shards and self.format_version == FORMAT_VERSION:
            # sharded weights are format 2: a manifest built in code equals the one parsed back
            object.__setattr__(self, "format_version", SHARDED_FORMAT_VERSION)

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["inputs"] = [spec.to_dict() for spec in self.inputs]  # unset limits left out
        # Optional fields are written only when set, so older manifests keep their bytes.
        if not self.outputs:
            del raw["outputs"]
        if not self.batching:
            del raw["batching"]
        if not self.compile:
            del raw["compile"]
        if self.skip_keys:
            raw["skip_keys"] = {"rule": SKIP_RULE, "keys": list(self.skip_keys)}
        else:
            del raw["skip_keys"]
        format_version = raw.pop("format_version")
        if self.weights.shards:
            w = raw["weights"]
            raw["weights"] = {"size_bytes": w["size_bytes"], "sha256": w["sha256"], "shards": w["shards"]}
            format_version = SHARDED_FORMAT_VERSION
        else:
            del raw["weights"]["shards"]  # single-file manifests keep their bytes
        ordered = {"format": FORMAT, "format_version": format_version}
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
    if not 0 <= value < 2**63:
        raise ManifestError(f"{_where(path + key)} must be >= 0 and < 2**63, got {short(value)}")
    return value


def _sha(obj: dict[str, Any], key: str, path: str) -> str:
    value = _get(obj, key, str, path)
    if not _SHA256.fullmatch(value):
        raise ManifestError(f"{_where(path + key)} must be 64 lowercase hex digits")
    return value


def _bounded_list(obj: dict[str, Any], key: str, path: str, limit: int) -> list[Any]:
    """A list field, refused by its length before any entry is looked at."""
    values = _get(obj, key, list, path)
    if len(values) > limit:
        raise ManifestError(
            f"{_where(path + key)} has {len(values)} entries, over the limit of {limit}; this is "
            "not a manifest warmstart wrote"
        )
    return values


def _name_list(obj: dict[str, Any], key: str, path: str, limit: int) -> tuple[str, ...]:
    values = _bounded_list(obj, key, path, limit)
    if not values or not all(isinstance(v, str) and 0 < len(v) <= MAX_TENSOR_NAME_LENGTH for v in values):
        raise ManifestError(
            f"{_where(path + key)} must be a non-empty list of names of 1-{MAX_TENSOR_NAME_LENGTH} characters"
        )
    if len(set(values)) != len(values):
        raise ManifestError(f"{_where(path + key)} lists a name twice")
    return tuple(values)


def _freeform(obj: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    """An optional free-form JSON object (kwargs, metadata), bounded in depth and size: it is
    serialised again later, and a deep tree would break ``json.dumps``."""
    value = obj.get(key, {})
    if not isinstance(value, dict):
        raise ManifestError(f"{_where(path + key)} must be an object")
    check_tree(
        value, what=_where(path + key), error=ManifestError,
        max_depth=MAX_FREEFORM_DEPTH, max_items=MAX_FREEFORM_ITEMS,
    )  # fmt: skip
    return dict(value)


def _tensor(raw: Any, i: int, where: str = "weights.") -> TensorEntry:
    path = f"{where}tensors[{i}]."
    if not isinstance(raw, dict):
        raise ManifestError(f"{_where(path[:-1])} must be an object")
    name = _get(raw, "name", str, path)
    if len(name) > MAX_TENSOR_NAME_LENGTH:
        raise ManifestError(
            f"{_where(path + 'name')} has {len(name)} characters, over the limit of {MAX_TENSOR_NAME_LENGTH}"
        )
    dtype = _get(raw, "dtype", str, path)
    if dtype not in SAFETENSORS_DTYPES:
        raise ManifestError(f"{_where(path + 'dtype')} {short(dtype)} is not a safetensors dtype")
    shape = _get(raw, "shape", list, path)
    problem = shape_problem(shape)
    if problem is not None:
        raise ManifestError(f"{_where(path + 'shape')} {problem}")
    offsets = _get(raw, "offsets", list, path)
    if (
        len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] < 2**63
    ):
        raise ManifestError(f"{_where(path + 'offsets')} must be [start, end] with 0 <= start <= end < 2**63")
    nbytes = tensor_nbytes(dtype, shape)
    if offsets[1] - offsets[0] != nbytes:
        raise ManifestError(
            f"{_where(path[:-1])} ({short(name)}): offsets span {offsets[1] - offsets[0]} bytes but "
            f"{dtype} {shape} needs {nbytes}"
        )
    return TensorEntry(name, dtype, tuple(shape), (offsets[0], offsets[1]))


_INPUT_KEYS = ("name", "dtype", "shape", "value_range", "dim_max", "pad")


def parse_input_spec(raw: Any, where: str) -> InputSpec:
    """Validate one input spec in its JSON form (as in the manifest's ``inputs``).

    Args:
        raw: ``{"name", "dtype", "shape"}`` and optionally ``value_range`` and ``dim_max``.
        where: names the spec in messages (``inputs[0]``).

    Raises:
        ManifestError: an unknown key, a name that is not an identifier, an unknown dtype, a
            shape that is not ints and dimension names (or too long, or too large), a
            ``value_range`` that is not ``[low, high)`` within an integer dtype, or a
            ``dim_max`` naming anything but a dynamic dimension of this input.
    """
    path = f"{where}."
    if not isinstance(raw, dict):
        raise ManifestError(f"{_where(where)} must be an object")
    unknown = [short(k) for k in raw if k not in _INPUT_KEYS][:5]
    if unknown:
        raise ManifestError(f"{_where(where)} has unknown keys {unknown}; an input takes {list(_INPUT_KEYS)}")
    name = _get(raw, "name", str, path)
    if not _INPUT_NAME.fullmatch(name):
        raise ManifestError(f"{_where(path + 'name')} {short(name)} must be an identifier of 1-64 characters")
    dtype = _get(raw, "dtype", str, path)
    if dtype not in INPUT_DTYPES:
        raise ManifestError(f"{_where(path + 'dtype')} {short(dtype)} must be one of {INPUT_DTYPES}")
    shape = raw.get("shape")
    if "shape" not in raw:
        _get(raw, "shape", list, path)  # raises: missing
    problem = shape_problem(shape, dynamic=True)
    if problem is not None:
        raise ManifestError(f"{_where(path + 'shape')} {problem}")
    value_range = _value_range(raw["value_range"], dtype, path) if "value_range" in raw else None
    dim_max = _dim_max(raw["dim_max"], shape, path) if "dim_max" in raw else {}
    pad = _pad(raw["pad"], dtype, value_range, path) if "pad" in raw else None
    return InputSpec(name, dtype, tuple(shape), value_range, dim_max, pad)


def _pad(value: Any, dtype: str, value_range: tuple[int, int] | None, path: str) -> int | float:
    where = _where(path + "pad")
    integer = dtype in INTEGER_RANGES or dtype == "bool"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ManifestError(f"{where} must be {'an int' if integer else 'a number'} for a {dtype} input, got {short(value)}")
    if not integer and not math.isfinite(value):
        raise ManifestError(f"{where} must be finite, got {value}")
    low, high = value_range or INTEGER_RANGES.get(dtype, (0, 2) if dtype == "bool" else (-math.inf, math.inf))
    if integer and not low <= value < high:
        raise ManifestError(f"{where} {value} is outside the input's values [{low}, {high})")
    return value


def _value_range(value: Any, dtype: str, path: str) -> tuple[int, int]:
    where = _where(path + "value_range")
    if not (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ManifestError(f"{where} must be [low, high] (two ints), got {short(value)}")
    if dtype not in INTEGER_RANGES:
        raise ManifestError(f"{where} is for integer dtypes only, but the input is {dtype}; remove it")
    low, high = value
    if not low < high:
        raise ManifestError(f"{where} [{short(low)}, {short(high)}) is empty: need low < high")
    lowest, highest = INTEGER_RANGES[dtype]
    if low < lowest or high > highest:
        raise ManifestError(
            f"{where} [{short(low)}, {short(high)}) does not fit {dtype}, which holds [{lowest}, {highest})"
        )
    return (low, high)


def _dim_max(value: Any, shape: list[int | str] | tuple[int | str, ...], path: str) -> dict[str, int]:
    where = _where(path + "dim_max")
    if not isinstance(value, dict):
        raise ManifestError(f"{where} must be an object of dimension name -> maximum size")
    dynamic = {d for d in shape if isinstance(d, str)}
    for dim, bound in value.items():
        if dim not in dynamic:
            raise ManifestError(
                f"{where} names {short(dim)}, which is not a dynamic dimension of this input "
                f"(those are {sorted(dynamic)})"
            )
        if not isinstance(bound, int) or isinstance(bound, bool):
            raise ManifestError(f"{where}[{dim!r}] must be an int, got {short(bound)}")
        if not 1 <= bound <= MAX_DIM:
            raise ManifestError(f"{where}[{dim!r}] must be >= 1 and not over the limit of {MAX_DIM}, got {short(bound)}")
    return dict(value)


def _tolerance(g: dict[str, Any], key: str) -> float:
    value = float(_get(g, key, (int, float), "golden."))
    if not math.isfinite(value) or value < 0:
        raise ManifestError(f"{_where('golden.' + key)} must be finite and >= 0, got {value}")
    return value


def parse_manifest(data: bytes | str | dict[str, Any]) -> Manifest:
    """Parse and validate a manifest.

    Args:
        data: the bytes of ``manifest.json`` (or its already-decoded JSON object).

    Returns:
        The validated :class:`Manifest`.

    Raises:
        ManifestError: not UTF-8 JSON, too large or too deeply nested, an unknown format or
            version, or any field missing, of the wrong type, too long or out of range; the
            message names the field.
        InvalidNameError: the model name or version is not a safe name.
    """
    if isinstance(data, (bytes, bytearray, str)):
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} limit")
        obj = load_json(data, what="manifest", error=ManifestError, max_depth=MAX_JSON_DEPTH)
    else:
        obj = data
    if not isinstance(obj, dict):
        raise ManifestError("manifest must be a JSON object")
    if obj.get("format") != FORMAT:
        raise ManifestError(f"manifest 'format' is {short(obj.get('format'))}, expected {FORMAT!r}")
    version_no = _get(obj, "format_version", int, "")
    if version_no not in FORMAT_VERSIONS:
        raise ManifestError(
            f"manifest format_version {short(version_no)} is not supported (this warmstart reads "
            f"{', '.join(map(str, FORMAT_VERSIONS))}); upgrade warmstart or republish the snapshot"
        )

    model = validate_name(_get(obj, "model", str, ""), "model name")
    version = validate_name(_get(obj, "version", str, ""), "version")
    created_at = _get(obj, "created_at", str, "")
    if len(created_at) > MAX_CREATED_AT_LENGTH:
        raise ManifestError(f"{_where('created_at')} must be at most {MAX_CREATED_AT_LENGTH} characters")

    arch = _get(obj, "architecture", dict, "")
    factory = _get(arch, "factory", str, "architecture.")
    if not _FACTORY.fullmatch(factory):
        raise ManifestError(f"{_where('architecture.factory')} {short(factory)} must be 'package.module:function'")
    kwargs = _freeform(arch, "kwargs", "architecture.")
    bad = [k for k in kwargs if not k.isidentifier()]
    if bad:  # the factory is called with **kwargs: each key must be a Python name
        raise ManifestError(f"{_where('architecture.kwargs')} keys must be Python names, got {short(bad)}; republish it")

    w = _get(obj, "weights", dict, "")
    weights = _sharded_weights(w) if version_no == SHARDED_FORMAT_VERSION else _single_weights(w)
    tensors = weights.tensors

    inputs_raw = _bounded_list(obj, "inputs", "", MAX_INPUTS)
    if not inputs_raw:
        raise ManifestError(f"{_where('inputs')} must declare at least one input tensor")
    inputs = tuple(parse_input_spec(s, f"inputs[{i}]") for i, s in enumerate(inputs_raw))
    if len({s.name for s in inputs}) != len(inputs):
        raise ManifestError(f"{_where('inputs')} names an input twice")

    g = _get(obj, "golden", dict, "")
    if _get(g, "file", str, "golden.") != GOLDEN_FILE:
        raise ManifestError(f"{_where('golden.file')} must be {GOLDEN_FILE!r}")
    golden = GoldenInfo(
        file=GOLDEN_FILE,
        size_bytes=_nonneg_int(g, "size_bytes", "golden."),
        sha256=_sha(g, "sha256", "golden."),
        inputs=_name_list(g, "inputs", "golden.", MAX_INPUTS),
        outputs=_name_list(g, "outputs", "golden.", MAX_OUTPUTS),
        rtol=_tolerance(g, "rtol"),
        atol=_tolerance(g, "atol"),
    )
    if set(golden.inputs) != {s.name for s in inputs}:
        raise ManifestError(
            f"{_where('golden.inputs')} {short(list(golden.inputs))} must name exactly the declared "
            f"inputs {[s.name for s in inputs]}"
        )
    outputs = _name_list(obj, "outputs", "", MAX_OUTPUTS) if "outputs" in obj else ()
    if outputs and set(outputs) != set(golden.outputs):
        raise ManifestError(
            f"{_where('outputs')} {short(list(outputs))} must name exactly the golden outputs "
            f"{short(list(golden.outputs))}; republish the snapshot"
        )
    return Manifest(
        model=model,
        version=version,
        created_at=created_at,
        architecture=ArchitectureSpec(factory, kwargs),
        weights=weights,
        inputs=inputs,
        golden=golden,
        metadata=_freeform(obj, "metadata", ""),
        outputs=outputs,
        skip_keys=_skip_keys(obj, {t.name for t in tensors}),
        batching=parse_batching(obj["batching"]) if "batching" in obj else {},
        compile=parse_compile(obj["compile"]) if "compile" in obj else {},
        format_version=version_no,
    )


def _single_weights(w: dict[str, Any]) -> WeightsInfo:
    """``weights`` of format version 1: one ``model.safetensors``."""
    if "shards" in w:
        raise ManifestError(
            f"{_where('weights.shards')} needs format_version {SHARDED_FORMAT_VERSION}; this manifest "
            f"says {FORMAT_VERSION}: republish the snapshot"
        )
    entry = _weights_file(w, "weights.", MAX_TENSORS, single=True)
    return WeightsInfo(entry.file, entry.size_bytes, entry.sha256, entry.header_bytes, entry.tensors)


def _weights_file(w: dict[str, Any], path: str, max_tensors: int, single: bool = False) -> WeightsFile:
    """One weights file's entry: name, size, sha256, header length, and its tensor index (at
    most ``max_tensors`` entries, refused by length before any is read)."""
    name = _get(w, "file", str, path)
    if single and name != WEIGHTS_FILE:
        raise ManifestError(f"{_where(path + 'file')} must be {WEIGHTS_FILE!r}")
    if not single:
        problem = shard_file_problem(name)
        if problem is not None:
            raise ManifestError(f"{_where(path + 'file')} {problem}")
    tensors_raw = _bounded_list(w, "tensors", path, max_tensors)
    tensors = tuple(_tensor(t, i, path) for i, t in enumerate(tensors_raw))
    if len({t.name for t in tensors}) != len(tensors):
        raise ManifestError(f"{_where(path + 'tensors')} names a tensor twice")
    entry = WeightsFile(
        file=name,
        size_bytes=_nonneg_int(w, "size_bytes", path),
        sha256=_sha(w, "sha256", path),
        header_bytes=_nonneg_int(w, "header_bytes", path),
        tensors=tensors,
    )
    data_bytes = entry.size_bytes - 8 - entry.header_bytes
    for t in tensors:
        if t.offsets[1] > data_bytes:
            raise ManifestError(
                f"tensor {short(t.name)} ends at byte {t.offsets[1]} of the data section"
                f"{'' if single else ' of ' + name}, which is only {data_bytes} bytes long"
            )
    return entry


_SHARDED_WEIGHTS_KEYS = ("size_bytes", "sha256", "shards")


def _sharded_weights(w: dict[str, Any]) -> WeightsInfo:
    """``weights`` of format version 2: ``shards``, each a file with its tensors; the totals
    must agree with them and no tensor may be in two shards."""
    unknown = [short(k) for k in w if k not in _SHARDED_WEIGHTS_KEYS][:5]
    if unknown:
        raise ManifestError(
            f"{_where('weights')} of a sharded snapshot has unknown keys {unknown}; it takes "
            f"{list(_SHARDED_WEIGHTS_KEYS)} (each shard has its own file, tensors and header_bytes)"
        )
    shards_raw = _bounded_list(w, "shards", "weights.", MAX_SHARDS)
    if not shards_raw:
        raise ManifestError(f"{_where('weights.shards')} must list at least one shard")
    shards: list[WeightsFile] = []
    holder: dict[str, str] = {}
    for i, raw in enumerate(shards_raw):
        path = f"weights.shards[{i}]."
        if not isinstance(raw, dict):
            raise ManifestError(f"{_where(path[:-1])} must be an object")
        listed = raw.get("tensors")
        if isinstance(listed, list) and len(holder) + len(listed) > MAX_TENSORS:  # before reading them
            raise ManifestError(
                f"{_where('weights.shards')} list over {MAX_TENSORS} tensors in all, the limit for "
                "one snapshot; this is not a manifest warmstart wrote"
            )
        shard = _weights_file(raw, path, MAX_TENSORS)
        for t in shard.tensors:
            if t.name in holder:
                raise ManifestError(
                    f"{_where('weights.shards')}: tensor {short(t.name)} is in both "
                    f"{holder[t.name]} and {shard.file}; a tensor belongs to one shard"
                )
            holder[t.name] = shard.file
        shards.append(shard)
    if len({s.file for s in shards}) != len(shards):
        raise ManifestError(f"{_where('weights.shards')} names a file twice")
    weights = WeightsInfo.from_shards(shards)
    size_bytes = _nonneg_int(w, "size_bytes", "weights.")
    if size_bytes != weights.size_bytes:
        raise ManifestError(
            f"{_where('weights.size_bytes')} is {size_bytes} but the shards hold {weights.size_bytes} "
            "bytes; republish the snapshot"
        )
    if _sha(w, "sha256", "weights.") != weights.sha256:
        raise ManifestError(
            f"{_where('weights.sha256')} is not the digest of the shard list (shards_digest); "
            "republish the snapshot"
        )
    return weights


MAX_BATCH = 4096
MAX_WAIT_MS = 1000.0


def parse_batching(raw: Any) -> dict[str, Any]:
    """``{"max_batch": 1..4096, "max_wait_ms": 0..1000}``, both required.

    Raises:
        ManifestError: another shape, or values out of range.
    """
    where = _where("batching")
    if not isinstance(raw, dict) or set(raw) != {"max_batch", "max_wait_ms"}:
        raise ManifestError(f"{where} must be {{'max_batch': n, 'max_wait_ms': t}}, got {short(raw)}")
    size, wait = raw["max_batch"], raw["max_wait_ms"]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BATCH:
        raise ManifestError(f"{where}.max_batch must be an int in [1, {MAX_BATCH}], got {short(size)}")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT_MS:
        raise ManifestError(f"{where}.max_wait_ms must be a number in [0, {MAX_WAIT_MS:g}], got {short(wait)}")
    return {"max_batch": size, "max_wait_ms": wait}


#: ``torch.compile`` backends a manifest may ask for: inductor generates and compiles code;
#: aot_eager and eager trace only (no generated code), for checking a model compiles at all.
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def parse_compile(raw: Any) -> dict[str, Any]:
    """``{"backend": one of COMPILE_BACKENDS, "mode": one of COMPILE_MODES}``, both required
    (``mode`` is inductor's; the other backends take ``default`` only).

    Raises:
        ManifestError: another shape, or a backend or mode warmstart does not know.
    """
    where = _where("compile")
    if not isinstance(raw, dict) or set(raw) != {"backend", "mode"}:
        raise ManifestError(f"{where} must be {{'backend': b, 'mode': m}}, got {short(raw)}")
    backend, mode = raw["backend"], raw["mode"]
    if backend not in COMPILE_BACKENDS:
        raise ManifestError(f"{where}.backend must be one of {', '.join(COMPILE_BACKENDS)}, got {short(backend)}")
    if mode not in COMPILE_MODES or (backend != "inductor" and mode != "default"):
        allowed = ", ".join(COMPILE_MODES) if backend == "inductor" else "default"
        raise ManifestError(f"{where}.mode for backend {backend} must be one of {allowed}, got {short(mode)}")
    return {"backend": backend, "mode": mode}


def _skip_keys(obj: dict[str, Any], tensor_names: set[str]) -> tuple[str, ...]:
    """The optional ``skip_keys`` object: ``{"rule": SKIP_RULE, "keys": [tensor names]}``."""
    if "skip_keys" not in obj:
        return ()
    raw = _get(obj, "skip_keys", dict, "")
    if set(raw) != {"rule", "keys"} or raw.get("rule") != SKIP_RULE:
        raise ManifestError(
            f"{_where('skip_keys')} must be {{'rule': {SKIP_RULE!r}, 'keys': [...]}}, got "
            f"{short(raw)}; upgrade warmstart or republish the snapshot"
        )
    keys = _name_list(raw, "keys", "skip_keys.", MAX_TENSORS)
    unknown = [k for k in keys if k not in tensor_names]
    if unknown:
        raise ManifestError(f"{_where('skip_keys.keys')} names {short(unknown)}, which are not tensors of the weights file")
    return keys
