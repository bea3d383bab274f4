"""Reading a safetensors header without trusting it, and checking it against the manifest."""

from __future__ import annotations

import dataclasses
import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from warmstart.infra.errors import SafetensorsHeaderError
from warmstart.snapshot.header import MAX_HEADER_BYTES, check_against_manifest, read_header, read_header_file
from warmstart.snapshot.manifest import TensorEntry, WeightsInfo
from tests.unit.snapshot.test_manifest import make_manifest


def raw_file(header: dict[str, Any], data: bytes, header_len: int | None = None) -> bytes:
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body) if header_len is None else header_len) + body + data


def parse(blob: bytes) -> tuple[int, dict[str, TensorEntry], dict[str, str]]:
    return read_header(io.BytesIO(blob), len(blob))


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "U8", "shape": [3], "data_offsets": [8, 11]}}  # fmt: skip


def test_valid_file() -> None:
    header_bytes, tensors, metadata = parse(raw_file({**GOOD, "__metadata__": {"k": "v"}}, bytes(11)))
    assert tensors["a"] == TensorEntry("a", "F32", (2,), (0, 8))
    assert tensors["b"].nbytes == 3
    assert metadata == {"k": "v"}
    assert header_bytes > 0


def test_agrees_with_real_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"x": torch.zeros(3, 4), "y": torch.ones(2, dtype=torch.int64)}, str(path))
    _, tensors, _ = read_header_file(path)
    assert tensors["x"].shape == (3, 4) and tensors["x"].dtype == "F32"
    assert tensors["y"].dtype == "I64"


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"", "too short"),
        (b"\x01\x02", "too short"),
        (raw_file(GOOD, bytes(11), header_len=MAX_HEADER_BYTES + 1), "header claims"),
        (raw_file(GOOD, bytes(11), header_len=2**63), "header claims"),
        (raw_file(GOOD, bytes(11), header_len=10_000), "truncated"),
        (struct.pack("<Q", 5) + b"nope!", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "JSON object"),
        (raw_file({"a": [1]}, b""), "must be an object"),
        (raw_file({"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)), "unknown dtype"),
        (raw_file({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)), "shape"),
        (raw_file({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4)), "shape"),
        (raw_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 400]}}, bytes(4)), "outside"),
        (raw_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, bytes(4)), "outside"),
        (raw_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, bytes(4)), "outside"),
        (raw_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4)), "do not hold"),
        (raw_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)), "overlaps"),
        (raw_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)), "gap"),
        (raw_file(GOOD, bytes(12)), "trailing"),
        (raw_file(GOOD, bytes(10)), "outside"),  # truncated data section
        (raw_file({**GOOD, "__metadata__": {"k": 1}}, bytes(11)), "__metadata__"),
    ],
)  # fmt: skip
def test_lying_headers_are_refused(blob: bytes, match: str) -> None:
    with pytest.raises(SafetensorsHeaderError, match=match):
        parse(blob)


def test_truncated_real_file(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"x": torch.zeros(64)}, str(path))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SafetensorsHeaderError):
        read_header_file(path)


# --- against the manifest -----------------------------------------------------------------


def _file_and_manifest(tmp_path: Path) -> tuple[Path, Any]:
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2, 3), "b": torch.zeros(1, dtype=torch.float64)}, str(path))
    header_bytes, tensors, _ = read_header_file(path)
    weights = WeightsInfo(
        "model.safetensors", path.stat().st_size, "a" * 64, header_bytes,
        tuple(sorted(tensors.values(), key=lambda t: t.offsets)),
    )  # fmt: skip
    return path, dataclasses.replace(make_manifest(), weights=weights)


def test_check_against_manifest_passes(tmp_path: Path) -> None:
    path, manifest = _file_and_manifest(tmp_path)
    assert set(check_against_manifest(path, manifest)) == {"w", "b"}


def _with_tensors(manifest: Any, tensors: tuple[TensorEntry, ...], **changes: Any) -> Any:
    return dataclasses.replace(manifest, weights=dataclasses.replace(manifest.weights, tensors=tensors, **changes))


def test_dtype_or_shape_disagreeing_with_manifest(tmp_path: Path) -> None:
    path, manifest = _file_and_manifest(tmp_path)
    by_name = {t.name: t for t in manifest.weights.tensors}
    other_dtype = dataclasses.replace(by_name["w"], dtype="I32")
    with pytest.raises(SafetensorsHeaderError, match="'w' is F32"):
        check_against_manifest(path, _with_tensors(manifest, (other_dtype, by_name["b"])))
    other_shape = dataclasses.replace(by_name["w"], shape=(3, 2))
    with pytest.raises(SafetensorsHeaderError, match=r"\[3, 2\]"):
        check_against_manifest(path, _with_tensors(manifest, (other_shape, by_name["b"])))


def test_missing_or_extra_tensor(tmp_path: Path) -> None:
    path, manifest = _file_and_manifest(tmp_path)
    extra = TensorEntry("z", "F32", (0,), (0, 0))
    with pytest.raises(SafetensorsHeaderError, match=r"missing \['z'\]"):
        check_against_manifest(path, _with_tensors(manifest, manifest.weights.tensors + (extra,)))
    with pytest.raises(SafetensorsHeaderError, match="extra"):
        check_against_manifest(path, _with_tensors(manifest, manifest.weights.tensors[:1]))


def test_size_or_header_length_disagreeing(tmp_path: Path) -> None:
    path, manifest = _file_and_manifest(tmp_path)
    with pytest.raises(SafetensorsHeaderError, match="bytes but the manifest records"):
        check_against_manifest(path, _with_tensors(manifest, manifest.weights.tensors, size_bytes=1))
    with pytest.raises(SafetensorsHeaderError, match="header is"):
        check_against_manifest(
            path, _with_tensors(manifest, manifest.weights.tensors, header_bytes=manifest.weights.header_bytes + 8)
        )


# --- hardening: nesting, ranks, dimensions, counts --------------------------------------------


def _raw_text(body: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(body)) + body + data


def test_deeply_nested_header_is_a_header_error() -> None:
    """100k levels of nesting used to escape as an untyped RecursionError."""
    body = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(SafetensorsHeaderError, match="levels deep.*limit"):
        parse(_raw_text(body))


def test_header_rank_is_bounded() -> None:
    blob = raw_file({"a": {"dtype": "U8", "shape": [1] * 65, "data_offsets": [0, 1]}}, bytes(1))
    with pytest.raises(SafetensorsHeaderError, match="65 dimensions.*limit of 64"):
        parse(blob)


def test_a_million_dimension_header_shape_fails_on_its_rank() -> None:
    blob = raw_file({"a": {"dtype": "U8", "shape": [2] * 1_000_000, "data_offsets": [0, 1]}}, bytes(1))
    with pytest.raises(SafetensorsHeaderError, match="1000000 dimensions") as info:
        parse(blob)
    assert len(str(info.value)) < 500


def test_header_dimension_is_bounded() -> None:
    blob = raw_file({"a": {"dtype": "U8", "shape": [2**62, 0], "data_offsets": [0, 0]}}, b"")
    with pytest.raises(SafetensorsHeaderError, match="over the limit"):
        parse(blob)


def test_header_tensor_count_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from warmstart.snapshot import header as header_module

    monkeypatch.setattr(header_module, "MAX_TENSORS", 2)
    entries = {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(3)}
    with pytest.raises(SafetensorsHeaderError, match="3 tensors.*limit of 2"):
        parse(raw_file(entries, bytes(3)))


def test_header_that_is_not_utf8() -> None:
    with pytest.raises(SafetensorsHeaderError, match="UTF-8"):
        parse(_raw_text(b'{"\xff": 1}'))


def test_long_names_and_values_give_short_messages() -> None:
    blob = raw_file({"a": {"dtype": "X" * 100_000, "shape": [1], "data_offsets": [0, 1]}}, bytes(1))
    with pytest.raises(SafetensorsHeaderError) as info:
        parse(blob)
    assert len(str(info.value)) < 500
    blob = raw_file({"n" * 100_000: {"dtype": "U8", "shape": [2], "data_offsets": [0, 1]}}, bytes(1))
    with pytest.raises(SafetensorsHeaderError) as info:
        parse(blob)
    assert len(str(info.value)) < 500
