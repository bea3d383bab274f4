"""The manifest format: pinned bytes, round trips, and refusal of anything malformed."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from warmstart.infra.errors import InvalidNameError, ManifestError
from warmstart.snapshot.manifest import (
    ArchitectureSpec,
    GoldenInfo,
    InputSpec,
    Manifest,
    TensorEntry,
    WeightsInfo,
    parse_manifest,
)

SHA_A = "a" * 64
SHA_B = "b" * 64


def make_manifest() -> Manifest:
    return Manifest(
        model="m",
        version="v1",
        created_at="2026-01-01T00:00:00Z",
        architecture=ArchitectureSpec("pkg.mod:build", {"hidden": 8}),
        weights=WeightsInfo(
            file="model.safetensors",
            size_bytes=8 + 100 + 24 + 8,
            sha256=SHA_A,
            header_bytes=100,
            tensors=(TensorEntry("w", "F32", (2, 3), (0, 24)), TensorEntry("b", "F64", (1,), (24, 32))),
        ),
        inputs=(InputSpec("x", "float32", ("batch", 3)),),
        golden=GoldenInfo("golden.safetensors", 10, SHA_B, ("x",), ("output",), 1e-4, 1e-5),
        metadata={"owner": "team"},
    )


PINNED = """{
  "format": "warmstart.snapshot",
  "format_version": 1,
  "model": "m",
  "version": "v1",
  "created_at": "2026-01-01T00:00:00Z",
  "architecture": {
    "factory": "pkg.mod:build",
    "kwargs": {
      "hidden": 8
    }
  },
  "weights": {
    "file": "model.safetensors",
    "size_bytes": 140,
    "sha256": "%s",
    "header_bytes": 100,
    "tensors": [
      {
        "name": "w",
        "dtype": "F32",
        "shape": [
          2,
          3
        ],
        "offsets": [
          0,
          24
        ]
      },
      {
        "name": "b",
        "dtype": "F64",
        "shape": [
          1
        ],
        "offsets": [
          24,
          32
        ]
      }
    ]
  },
  "inputs": [
    {
      "name": "x",
      "dtype": "float32",
      "shape": [
        "batch",
        3
      ]
    }
  ],
  "golden": {
    "file": "golden.safetensors",
    "size_bytes": 10,
    "sha256": "%s",
    "inputs": [
      "x"
    ],
    "outputs": [
      "output"
    ],
    "rtol": 0.0001,
    "atol": 1e-05
  },
  "metadata": {
    "owner": "team"
  }
}
""" % (SHA_A, SHA_B)


def valid() -> dict[str, Any]:
    return make_manifest().to_dict()


def test_exact_bytes_are_pinned() -> None:
    assert make_manifest().to_json().decode() == PINNED


def test_round_trip() -> None:
    manifest = make_manifest()
    assert parse_manifest(manifest.to_json()) == manifest
    assert parse_manifest(manifest.to_json().decode()) == manifest
    assert parse_manifest(valid()) == manifest
    assert parse_manifest(PINNED.encode()).to_json().decode() == PINNED


def test_optional_fields_default() -> None:
    raw = valid()
    del raw["metadata"]
    del raw["architecture"]["kwargs"]
    parsed = parse_manifest(raw)
    assert parsed.metadata == {} and parsed.architecture.kwargs == {}


def _mutate(path: str, value: Any = ..., delete: bool = False) -> dict[str, Any]:
    raw = copy.deepcopy(valid())
    *parents, last = path.split(".")
    target: Any = raw
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    key: Any = int(last) if last.isdigit() else last
    if delete:
        del target[key]
    else:
        target[key] = value
    return raw


@pytest.mark.parametrize(
    "path",
    ["format_version", "model", "version", "created_at", "architecture", "architecture.factory",
     "weights", "weights.file", "weights.size_bytes", "weights.sha256", "weights.header_bytes",
     "weights.tensors", "weights.tensors.0.name", "weights.tensors.0.dtype",
     "weights.tensors.0.shape", "weights.tensors.0.offsets", "inputs", "inputs.0.name",
     "inputs.0.dtype", "inputs.0.shape", "golden", "golden.file", "golden.size_bytes",
     "golden.sha256", "golden.inputs", "golden.outputs", "golden.rtol", "golden.atol"],
)  # fmt: skip
def test_missing_field_is_named(path: str) -> None:
    with pytest.raises(ManifestError, match="missing") as info:
        parse_manifest(_mutate(path, delete=True))
    assert path.split(".")[-1] in str(info.value)


def test_missing_format_is_refused() -> None:
    with pytest.raises(ManifestError, match="format"):
        parse_manifest(_mutate("format", delete=True))


@pytest.mark.parametrize("version", [0, 2, 99])
def test_unknown_format_version(version: int) -> None:
    with pytest.raises(ManifestError, match=f"format_version {version} is not supported"):
        parse_manifest(_mutate("format_version", version))


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        ("format", "other.format", "format"),
        ("format_version", True, "boolean"),
        ("format_version", "1", "type"),
        ("weights.size_bytes", -1, ">= 0"),
        ("weights.size_bytes", 1.5, "type"),
        ("weights.size_bytes", True, "boolean"),
        ("weights.sha256", "ABC", "hex"),
        ("weights.sha256", "A" * 64, "hex"),
        ("weights.file", "../model.safetensors", "model.safetensors"),
        ("golden.file", "other.safetensors", "golden.safetensors"),
        ("architecture.factory", "os.system", "package.module:function"),
        ("architecture.factory", "a:b; rm -rf", "package.module:function"),
        ("architecture.kwargs", [], "object"),
        ("weights.tensors.0.dtype", "F128", "dtype"),
        ("weights.tensors.0.shape", [2, -3], "non-negative"),
        ("weights.tensors.0.offsets", [0], r"\[start, end\]"),
        ("weights.tensors.0.offsets", [24, 0], r"\[start, end\]"),
        ("weights.tensors.0.offsets", [0, 20], "needs 24"),
        ("weights.tensors.1.offsets", [24, 2000], "span|data section"),
        ("inputs", [], "at least one"),
        ("inputs.0.dtype", "complex64", "must be one of"),
        ("inputs.0.name", "1bad", "identifier"),
        ("inputs.0.shape", [0, 3], "positive ints"),
        ("inputs.0.shape", ["bad dim"], "dimension names"),
        ("golden.inputs", ["y"], "declared inputs"),
        ("golden.inputs", [], "non-empty"),
        ("golden.outputs", ["o", "o"], "twice"),
        ("golden.rtol", -1, ">= 0"),
        ("metadata", [], "object"),
    ],
)
def test_bad_values_are_refused(path: str, value: Any, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        parse_manifest(_mutate(path, value))


def test_tensor_past_the_data_section() -> None:
    raw = valid()
    raw["weights"]["size_bytes"] = 8 + 100 + 24  # the second tensor no longer fits
    with pytest.raises(ManifestError, match="ends at byte 32"):
        parse_manifest(raw)


def test_duplicate_tensor_and_input_names() -> None:
    raw = valid()
    raw["weights"]["tensors"][1]["name"] = "w"
    with pytest.raises(ManifestError, match="twice"):
        parse_manifest(raw)
    raw = valid()
    raw["inputs"].append(dict(raw["inputs"][0]))
    with pytest.raises(ManifestError, match="twice"):
        parse_manifest(raw)


@pytest.mark.parametrize(("field", "value"), [("model", "../evil"), ("version", "v/1"), ("model", "a..b")])
def test_unsafe_names_are_refused(field: str, value: str) -> None:
    with pytest.raises(InvalidNameError):
        parse_manifest(_mutate(field, value))


@pytest.mark.parametrize("data", [b"", b"not json", b"[1, 2]", b"\xff\xfe", "null"])
def test_not_a_json_object(data: bytes | str) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(data)


def test_too_large() -> None:
    with pytest.raises(ManifestError, match="over the"):
        parse_manifest(b" " * (16 * 1024 * 1024 + 1))


def test_input_spec_lookup() -> None:
    manifest = make_manifest()
    assert manifest.input_spec("x") == InputSpec("x", "float32", ("batch", 3))
    assert manifest.input_spec("nope") is None
    assert json.loads(manifest.to_json())["inputs"][0]["shape"] == ["batch", 3]
