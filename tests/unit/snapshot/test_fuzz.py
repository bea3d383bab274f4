"""Fuzzing the two parsers of bucket data: every input ends in a parse or a typed error.

Manifests and safetensors headers come from a bucket. Whatever their bytes, the parsers must
either return a correct result or raise a :class:`WarmstartError` subclass; any other
exception (KeyError, TypeError, RecursionError, OverflowError...) is a bug.
"""

from __future__ import annotations

import copy
import io
import json
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmstart.infra.errors import WarmstartError
from warmstart.snapshot.header import read_header
from warmstart.snapshot.manifest import Manifest, parse_manifest
from tests.unit.snapshot.test_manifest import PINNED, valid

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
    | st.sampled_from(["F32", "U8", "int64", "float32", "batch", "seq", "x", "a" * 64, "w", "output"])
)  # fmt: skip
json_trees = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=10), children, max_size=6),
    max_leaves=40,
)


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``tree`` (dict keys and list indices)."""
    out = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            out += _paths(value, prefix + (i,))
    return out


def _mutate_once(draw: st.DrawFn, tree: Any) -> bool:
    """Replace one value somewhere in ``tree`` by arbitrary JSON, or delete it from its
    object. False when the tree has nothing left to mutate."""
    paths = [p for p in _paths(tree) if p]
    if not paths:
        return False
    path = draw(st.sampled_from(paths))
    parent: Any = tree
    for part in path[:-1]:
        parent = parent[part]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_trees)
    return True


@st.composite
def mutated_manifests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid manifest with a few values replaced by arbitrary JSON, or deleted."""
    raw = copy.deepcopy(valid())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if not _mutate_once(draw, raw):
            break
    return raw


def _check_manifest(data: Any) -> None:
    try:
        manifest = parse_manifest(data)
    except WarmstartError:
        return
    # A parse must be a correct one: what it returns survives its own round trip.
    assert isinstance(manifest, Manifest)
    assert parse_manifest(manifest.to_json()) == manifest


@FUZZ
@given(json_trees)
def test_arbitrary_json_trees(tree: Any) -> None:
    _check_manifest(tree if isinstance(tree, dict) else {"tree": tree})
    _check_manifest(json.dumps(tree).encode())


@FUZZ
@given(mutated_manifests())
def test_mutated_manifests(raw: dict[str, Any]) -> None:
    _check_manifest(raw)
    _check_manifest(json.dumps(raw).encode())


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_manifest_bytes(data: bytes) -> None:
    _check_manifest(data)


@st.composite
def mutated_bytes(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few bytes flipped, inserted or deleted."""
    data = bytearray(base)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip" and data:
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b"[", b"{", b'"', b"\\", b"9" * 30]))
        elif data:
            del data[at]
    return bytes(data)


@FUZZ
@given(mutated_bytes(PINNED.encode()))
def test_mutated_manifest_bytes(data: bytes) -> None:
    _check_manifest(data)


# --- safetensors headers ----------------------------------------------------------------------

GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "U8", "shape": [3], "data_offsets": [8, 11]},
        "__metadata__": {"format": "pt"}}  # fmt: skip


def _file(header: Any, data: bytes = bytes(11)) -> bytes:
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


def _check_header(blob: bytes) -> None:
    try:
        header_bytes, tensors, metadata = read_header(io.BytesIO(blob), len(blob))
    except WarmstartError:
        return
    # A parse must be a correct one: the tensors tile the data section exactly.
    data_bytes = len(blob) - 8 - header_bytes
    assert sum(t.nbytes for t in tensors.values()) == data_bytes
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_header_bytes(blob: bytes) -> None:
    _check_header(blob)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_behind_a_plausible_length(body: bytes) -> None:
    _check_header(struct.pack("<Q", len(body)) + body)


@FUZZ
@given(mutated_bytes(_file(GOOD)))
def test_mutated_header_bytes(blob: bytes) -> None:
    _check_header(blob)


@st.composite
def mutated_headers(draw: st.DrawFn) -> bytes:
    header = copy.deepcopy(GOOD)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if not _mutate_once(draw, header) or not header:
            break
    data = draw(st.sampled_from([bytes(11), bytes(0), bytes(12), bytes(3)]))
    return _file(header, data)


@FUZZ
@given(mutated_headers())
def test_mutated_header_trees(blob: bytes) -> None:
    _check_header(blob)


def test_kwargs_with_a_nan_or_a_key_that_is_no_python_name_are_refused() -> None:
    # Found by test_mutated_manifests: {"": NaN} parsed, and did not survive its round trip.
    from warmstart.infra.errors import ManifestError
    import pytest

    for kwargs, message in (({"x": float("nan")}, "NaN"), ({"x": [float("inf")]}, "Infinity"), ({"": 1}, "Python names")):
        raw = copy.deepcopy(valid())
        raw["architecture"]["kwargs"] = kwargs
        with pytest.raises(ManifestError, match=message):
            parse_manifest(raw)
