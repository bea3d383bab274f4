"""Reading and checking a safetensors file's header without trusting it.

A safetensors file is ``u64 little-endian header length | JSON header | data``. The header
comes from a bucket, so every claim in it is checked: a bounded length, UTF-8 JSON of bounded
nesting and the right shape, a bounded number of tensors, known dtypes, shapes of bounded rank
and dimensions (checked before any product is taken), offsets inside the file that tile the
data section without overlapping, and sizes that agree with dtype and shape.
:func:`check_against_manifest` then requires the header to say exactly what the manifest's
tensor index says.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from warmstart.infra.errors import SafetensorsHeaderError
from warmstart.snapshot.jsonlimits import load_json, short
from warmstart.snapshot.manifest import (
    MAX_TENSOR_NAME_LENGTH,
    MAX_TENSORS,
    SAFETENSORS_DTYPES,
    Manifest,
    TensorEntry,
    WeightsFile,
    shape_problem,
    tensor_nbytes,
)

#: safetensors itself refuses headers over 100 MB; so do we.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_header(stream: BinaryIO, file_size: int) -> tuple[int, dict[str, TensorEntry], dict[str, str]]:
    """Parse and validate the header of a safetensors file.

    Args:
        stream: the file, positioned at its start.
        file_size: its size in bytes.

    Returns:
        ``(header_bytes, tensors by name, __metadata__)``.

    Raises:
        SafetensorsHeaderError: a truncated file, a header length that is too large, a header
            that is not UTF-8 JSON of the expected shape (or nests too deeply, or lists too
            many tensors), an unknown dtype, a shape of too many or too large dimensions, or
            offsets out of range, overlapping, leaving gaps, or disagreeing with dtype and
            shape.
    """
    prefix = stream.read(8)
    if len(prefix) < 8:
        raise SafetensorsHeaderError(f"file is {file_size} bytes, too short for a safetensors header")
    (header_bytes,) = struct.unpack("<Q", prefix)
    if header_bytes > MAX_HEADER_BYTES or 8 + header_bytes > file_size:
        raise SafetensorsHeaderError(
            f"header claims {header_bytes} bytes but the file has {file_size} bytes in all "
            f"(limit {MAX_HEADER_BYTES}): the file is truncated or not safetensors"
        )
    raw = stream.read(header_bytes)
    if len(raw) != header_bytes:
        raise SafetensorsHeaderError("file ended inside the header: it is truncated")
    header = load_json(raw, what="safetensors header", error=SafetensorsHeaderError)
    if not isinstance(header, dict):
        raise SafetensorsHeaderError("header must be a JSON object")
    count = len(header) - ("__metadata__" in header)
    if count > MAX_TENSORS:
        raise SafetensorsHeaderError(
            f"header lists {count} tensors, over the limit of {MAX_TENSORS}: the file is not "
            "a model warmstart can serve"
        )

    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsHeaderError("__metadata__ must map strings to strings")

    data_bytes = file_size - 8 - header_bytes
    tensors: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if len(name) > MAX_TENSOR_NAME_LENGTH:
            raise SafetensorsHeaderError(
                f"tensor {short(name)}: the name has {len(name)} characters, over the limit of "
                f"{MAX_TENSOR_NAME_LENGTH}"
            )
        if not isinstance(info, dict):
            raise SafetensorsHeaderError(f"tensor {short(name)}: entry must be an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise SafetensorsHeaderError(f"tensor {short(name)}: unknown dtype {short(dtype)}")
        problem = shape_problem(shape)  # rank and each dimension, before any product
        if problem is not None:
            raise SafetensorsHeaderError(f"tensor {short(name)}: shape {problem}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes
        ):
            raise SafetensorsHeaderError(
                f"tensor {short(name)}: data_offsets {short(offsets)} fall outside the "
                f"{data_bytes}-byte data section"
            )
        if offsets[1] - offsets[0] != tensor_nbytes(dtype, shape):
            raise SafetensorsHeaderError(
                f"tensor {short(name)}: {offsets[1] - offsets[0]} bytes do not hold {dtype} {shape}"
            )
        tensors[name] = TensorEntry(name, dtype, tuple(shape), (offsets[0], offsets[1]))

    # The tensors must tile the data section exactly: no overlap (aliasing bytes), no gaps.
    position = 0
    for entry in sorted(tensors.values(), key=lambda t: t.offsets):
        if entry.offsets[0] != position:
            kind = "overlaps the tensor before it" if entry.offsets[0] < position else "leaves a gap"
            raise SafetensorsHeaderError(f"tensor {short(entry.name)} at {entry.offsets} {kind}")
        position = entry.offsets[1]
    if position != data_bytes:
        raise SafetensorsHeaderError(
            f"tensors cover {position} bytes but the data section has {data_bytes}: the file is "
            "truncated or has trailing bytes"
        )
    return header_bytes, tensors, metadata


def read_header_file(path: Path) -> tuple[int, dict[str, TensorEntry], dict[str, str]]:
    """:func:`read_header` on a file path."""
    with open(path, "rb") as stream:
        return read_header(stream, path.stat().st_size)


def check_against_manifest(path: Path, manifest: Manifest) -> dict[str, TensorEntry]:
    """Require the file's header to agree exactly with the manifest's tensor index.

    For a sharded manifest, ``path`` is the folder holding the shard files: each is checked
    against its own entry (:func:`check_file`) and the union of their tensors is returned.

    Raises:
        SafetensorsHeaderError: the header is invalid, or a tensor is missing, extra, or has
            another dtype, shape or offsets than the manifest records.
    """
    if manifest.weights.shards:
        tensors: dict[str, TensorEntry] = {}
        for entry in manifest.weights.shards:
            tensors.update(check_file(path / entry.file, entry))
        return tensors
    return check_file(path, manifest.weights.files[0])


def check_file(path: Path, entry: WeightsFile) -> dict[str, TensorEntry]:
    """Require one weights file (the single file or a shard) to agree exactly with its entry
    in the manifest: size, header length and every tensor.

    Raises:
        SafetensorsHeaderError: as :func:`check_against_manifest`.
    """
    size = path.stat().st_size
    if size != entry.size_bytes:
        raise SafetensorsHeaderError(f"{entry.file} is {size} bytes but the manifest records {entry.size_bytes}")
    header_bytes, tensors, _ = read_header_file(path)
    if header_bytes != entry.header_bytes:
        raise SafetensorsHeaderError(
            f"{entry.file}: header is {header_bytes} bytes but the manifest records {entry.header_bytes}"
        )
    expected = {t.name: t for t in entry.tensors}
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))[:5]
        extra = sorted(set(tensors) - set(expected))[:5]
        raise SafetensorsHeaderError(f"{entry.file}: tensors disagree with the manifest: missing {missing}, extra {extra}")
    for name, found in tensors.items():
        if found != expected[name]:
            raise SafetensorsHeaderError(
                f"{entry.file}: tensor {short(name)} is {found.dtype} {list(found.shape)} at {found.offsets} in the "
                f"file but {expected[name].dtype} {list(expected[name].shape)} at "
                f"{expected[name].offsets} in the manifest"
            )
    return tensors
