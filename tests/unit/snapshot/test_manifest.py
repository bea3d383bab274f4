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


@pytest.mark.parametrize("version", [0, 3, 99])
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


# --- hardening: shapes, counts, nesting, regexes ----------------------------------------------


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_manifest_is_a_manifest_error() -> None:
    """100k levels of nesting used to escape as an untyped RecursionError."""
    with pytest.raises(ManifestError, match="levels deep.*limit of 32"):
        parse_manifest(_nested(100_000).encode())
    deep_metadata = PINNED.replace('"owner": "team"', '"owner": ' + _nested(100_000))
    with pytest.raises(ManifestError, match="limit of 32"):
        parse_manifest(deep_metadata)


@pytest.mark.parametrize("field", ["architecture.kwargs", "metadata"])
def test_free_form_fields_have_a_depth_limit(field: str) -> None:
    """kwargs and metadata are re-serialised later; a decoded tree deep enough to break
    json.dumps (or a pathological one) is refused when parsed from an object too."""
    deep: Any = 1
    for _ in range(20):
        deep = {"k": deep}
    with pytest.raises(ManifestError, match=f"{field}.*deeper than 16"):
        parse_manifest(_mutate(field, deep))
    fine: Any = 1
    for _ in range(15):
        fine = {"k": fine}
    parse_manifest(_mutate(field, fine))


def test_free_form_fields_must_be_json() -> None:
    with pytest.raises(ManifestError, match="metadata.*JSON"):
        parse_manifest(_mutate("metadata", {"when": object()}))


def test_tensor_rank_is_bounded_before_any_product() -> None:
    raw = valid()
    raw["weights"]["tensors"][0]["shape"] = [1] * 65
    with pytest.raises(ManifestError, match="65 dimensions.*limit of 64"):
        parse_manifest(raw)


def test_a_million_dimension_shape_fails_on_its_rank() -> None:
    """math.prod over a million dimensions of 2 is quadratic in the size of the result; the
    rank is refused before any product is taken."""
    raw = valid()
    raw["weights"]["tensors"][0]["shape"] = [2] * 1_000_000
    with pytest.raises(ManifestError, match="1000000 dimensions"):
        parse_manifest(raw)


def test_huge_dimension_is_refused() -> None:
    raw = valid()
    raw["weights"]["tensors"][0]["shape"] = [2**62, 0]
    with pytest.raises(ManifestError, match="dimension .* over the limit"):
        parse_manifest(raw)


def test_input_rank_and_dimensions_are_bounded() -> None:
    with pytest.raises(ManifestError, match="65 dimensions"):
        parse_manifest(_mutate("inputs.0.shape", [1] * 65))
    with pytest.raises(ManifestError, match="over the limit"):
        parse_manifest(_mutate("inputs.0.shape", [2**62]))


@pytest.mark.parametrize(
    ("path", "limit_name", "make"),
    [
        ("weights.tensors", "MAX_TENSORS", lambda: {"name": "t", "dtype": "U8", "shape": [0], "offsets": [0, 0]}),
        ("inputs", "MAX_INPUTS", lambda: {"name": "x", "dtype": "float32", "shape": [1]}),
        ("golden.outputs", "MAX_OUTPUTS", lambda: "o"),
    ],
)  # fmt: skip
def test_list_lengths_are_bounded(
    path: str, limit_name: str, make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from warmstart.snapshot import manifest as manifest_module

    monkeypatch.setattr(manifest_module, limit_name, 3)
    with pytest.raises(ManifestError, match="4 entries.*limit of 3"):
        parse_manifest(_mutate(path, [make() for _ in range(4)]))


def test_long_names_are_refused_with_a_short_message() -> None:
    raw = valid()
    raw["weights"]["tensors"][0]["name"] = "w" * 100_000
    with pytest.raises(ManifestError, match="characters") as info:
        parse_manifest(raw)
    assert len(str(info.value)) < 500
    with pytest.raises(ManifestError) as info:
        parse_manifest(_mutate("weights.tensors.0.dtype", "F" * 100_000))
    assert len(str(info.value)) < 500


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("weights.sha256", "a" * 64 + "\n"),
        ("golden.sha256", "b" * 64 + "\n"),
        ("architecture.factory", "pkg.mod:build\n"),
        ("inputs.0.shape", ["batch\n", 3]),
        ("model", "m\n"),
        ("version", "v1\n"),
    ],
)
def test_trailing_newlines_are_refused(path: str, value: Any) -> None:
    """``$`` matches before a final newline; every pattern must match the whole value."""
    with pytest.raises((ManifestError, InvalidNameError)):
        parse_manifest(_mutate(path, value))


def test_trailing_newline_in_an_input_name_is_refused() -> None:
    with pytest.raises(ManifestError, match="identifier"):
        parse_manifest(_with_input({"name": "x\n", "dtype": "float32", "shape": [3]}))


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_tolerances_must_be_finite(value: float) -> None:
    with pytest.raises(ManifestError, match="finite"):
        parse_manifest(_mutate("golden.rtol", value))


def test_created_at_is_bounded() -> None:
    with pytest.raises(ManifestError, match="created_at"):
        parse_manifest(_mutate("created_at", "2026" * 1000))


# --- input specs: value_range and dim_max -----------------------------------------------------


def _with_input(spec: dict[str, Any]) -> dict[str, Any]:
    raw = valid()
    raw["inputs"] = [spec]
    raw["golden"]["inputs"] = [spec["name"]]
    return raw


def test_value_range_and_dim_max_round_trip() -> None:
    spec = {"name": "ids", "dtype": "int64", "shape": ["batch", "seq"], "value_range": [0, 30000],
            "dim_max": {"batch": 256, "seq": 512}}  # fmt: skip
    manifest = parse_manifest(_with_input(spec))
    parsed = manifest.inputs[0]
    assert parsed.value_range == (0, 30000) and parsed.dim_max == {"batch": 256, "seq": 512}
    assert json.loads(manifest.to_json())["inputs"] == [spec]
    assert parse_manifest(manifest.to_json()) == manifest
    assert hash(parsed) == hash(InputSpec("ids", "int64", ("batch", "seq"), (0, 30000), {"batch": 256}))


def test_unset_limits_are_not_serialised() -> None:
    spec = InputSpec("x", "float32", ("batch", 3))
    assert spec.value_range is None and spec.dim_max == {}
    assert spec.to_dict() == {"name": "x", "dtype": "float32", "shape": ["batch", 3]}
    assert "value_range" not in make_manifest().to_json().decode()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"dtype": "float32", "value_range": [0, 10]}, "integer dtypes"),
        ({"dtype": "bool", "value_range": [0, 2]}, "integer dtypes"),
        ({"value_range": [10, 10]}, "low < high"),
        ({"value_range": [5, 1]}, "low < high"),
        ({"value_range": [0]}, r"\[low, high\]"),
        ({"value_range": [0, 1, 2]}, r"\[low, high\]"),
        ({"value_range": [0, 1.5]}, r"\[low, high\]"),
        ({"value_range": [False, True]}, r"\[low, high\]"),
        ({"value_range": None}, r"\[low, high\]"),
        ({"value_range": {"low": 0}}, r"\[low, high\]"),
        ({"dtype": "uint8", "value_range": [-1, 10]}, "uint8"),
        ({"dtype": "int8", "value_range": [0, 129]}, "int8"),
        ({"value_range": [0, 2**64]}, "int64"),
        ({"dim_max": {"seq": 0}}, ">= 1"),
        ({"dim_max": {"seq": True}}, "int"),
        ({"dim_max": {"seq": 2**62}}, "over the limit"),
        ({"dim_max": {"other": 4}}, "not a dynamic dimension"),
        ({"dim_max": {"3": 4}}, "not a dynamic dimension"),
        ({"dim_max": [["seq", 4]]}, "object"),
        ({"dim_max": {"seq": 4}, "extra": 1}, "unknown"),
    ],
)  # fmt: skip
def test_bad_input_limits_are_refused(changes: dict[str, Any], match: str) -> None:
    spec = {"name": "ids", "dtype": "int64", "shape": ["batch", "seq", 3], **changes}
    with pytest.raises(ManifestError, match=match):
        parse_manifest(_with_input(spec))


def test_uint8_full_range_is_allowed() -> None:
    spec = {"name": "px", "dtype": "uint8", "shape": [3], "value_range": [0, 256]}
    assert parse_manifest(_with_input(spec)).inputs[0].value_range == (0, 256)
