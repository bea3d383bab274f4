"""Request validation before any decoding or forward: ranks, dimensions, sizes from the
declared shapes and the base64 length, nested lists walked without recursion, and the input
spec's optional ``value_range`` and ``dim_max``."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest
import torch

from warmstart.infra.errors import InvalidInputError, PayloadTooLargeError
from warmstart.snapshot.manifest import InputSpec
from warmstart.workers.wire import decode_inputs, decode_outputs, encode_tensor

SPECS = (InputSpec("ids", "int64", ("batch", "seq")), InputSpec("dense", "float32", ("batch", 4)))


@dataclasses.dataclass(frozen=True)
class BoundedSpec:
    """InputSpec with the optional bounds (a stand-in until the manifest carries them)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    value_range: tuple[int, int] | None = None
    dim_max: dict[str, int] = dataclasses.field(default_factory=dict)


def bounded_spec(*args: Any, **bounds: Any) -> Any:
    """The real InputSpec when it takes the bounds, else the stand-in."""
    try:
        return InputSpec(*args, **bounds)
    except TypeError:
        return BoundedSpec(*args, **bounds)


def request(ids: Any = None, dense: Any = None) -> dict[str, Any]:
    return {
        "ids": encode_tensor(torch.zeros(2, 3, dtype=torch.int64)) if ids is None else ids,
        "dense": encode_tensor(torch.zeros(2, 4)) if dense is None else dense,
    }


def test_a_rank_over_64_is_refused_before_the_dimensions_are_read() -> None:
    shape = [1] * 65
    tensor = {"dtype": "float32", "shape": shape, "data": base64.b64encode(b"\0" * 4).decode()}
    with pytest.raises(InvalidInputError, match="65 dimensions; at most 64"):
        decode_inputs(request(dense=tensor), SPECS, max_bytes=10_000)


def test_a_huge_declared_shape_is_too_large_before_its_data_is_decoded() -> None:
    # Invalid base64 too: only decoding it would say so, and it must not be decoded.
    tensor = {"dtype": "int64", "shape": [2, 10**12], "data": "!!!!"}
    with pytest.raises(PayloadTooLargeError, match="WARMSTART_MAX_PAYLOAD_BYTES"):
        decode_inputs(request(ids=tensor), SPECS, max_bytes=10_000)
    # Many huge dimensions: refused on the first, never multiplied.
    tensor = {"dtype": "float32", "shape": [2**62] * 64, "data": ""}
    with pytest.raises(PayloadTooLargeError):
        decode_outputs({"out": tensor})


def test_the_declared_sizes_of_all_inputs_count_before_decoding() -> None:
    ids = {"dtype": "int64", "shape": [2, 500], "data": "!!!!"}  # 8000 bytes, within 10_000 alone
    dense = {"dtype": "float32", "shape": [2, 4], "data": "not base64 either"}  # 32 more
    with pytest.raises(PayloadTooLargeError):
        decode_inputs(request(ids=ids, dense=dense), SPECS, max_bytes=8_010)


def test_the_base64_length_is_checked_before_decoding() -> None:
    tensor = {"dtype": "float32", "shape": [2, 4], "data": "!" * 1_000_000}
    with pytest.raises(InvalidInputError, match=r"750000 bytes of data \(in 1000000 characters of base64\) but float32 \[2, 4\] needs 32"):
        decode_inputs(request(dense=tensor), SPECS, max_bytes=10_000)


def test_wrong_padding_of_the_right_length_is_refused() -> None:
    data = base64.b64encode(b"\0" * 32).decode()
    tensor = {"dtype": "float32", "shape": [2, 4], "data": data[:-4] + "AA=="}  # 31 bytes, not 32
    with pytest.raises(InvalidInputError, match="31 bytes of data"):
        decode_inputs(request(dense=tensor), SPECS, max_bytes=10_000)


def test_nested_lists_are_counted_before_torch_sees_them() -> None:
    # Not numbers either: only torch.tensor would notice, and it must not run.
    too_many = [["x"] * 4 for _ in range(1000)]
    with pytest.raises(PayloadTooLargeError, match=r"more than \d+ values"):
        decode_inputs(request(dense=too_many), SPECS, max_bytes=1000)


def test_nested_lists_deeper_than_the_spec_are_refused_without_recursion() -> None:
    deep: Any = 0.0
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidInputError, match="deeper than the model's 2 dimensions"):
        decode_inputs(request(dense=deep), SPECS, max_bytes=10_000)


def test_nested_list_shapes_are_checked_against_the_spec_before_conversion() -> None:
    with pytest.raises(InvalidInputError, match="size 3 at dimension 1"):
        decode_inputs(request(dense=[["a", "b", "c"], ["d", "e", "f"]]), SPECS, max_bytes=10_000)
    with pytest.raises(InvalidInputError, match="rectangular"):
        decode_inputs(request(dense=[[1, 2, 3, 4], [1, 2, 3]]), SPECS, max_bytes=10_000)
    with pytest.raises(InvalidInputError, match="rectangular"):
        decode_inputs(request(dense=[[1, 2, 3, 4], 5]), SPECS, max_bytes=10_000)
    ok = decode_inputs(request(ids=[[1, 2, 3], [4, 5, 6]], dense=[[1, 2, 3, 4], [5, 6, 7, 8]]), SPECS, max_bytes=10_000)
    assert ok["ids"].shape == (2, 3) and ok["dense"].dtype == torch.float32


ITEMS = (bounded_spec("items", "int64", ("batch", "seq"), value_range=(0, 100), dim_max={"seq": 8}),)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([[1, 2, 100]], r"value 100 at \[0, 2\] is outside \[0, 100\)"),
        ([[5, -1, 3]], r"value -1 at \[0, 1\] is outside"),
        (encode_tensor(torch.tensor([[7, 2**40]])), r"value 1099511627776 at \[0, 1\]"),
    ],
)
def test_values_outside_the_value_range_are_refused(items: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        decode_inputs({"items": items}, ITEMS, max_bytes=10_000)


def test_values_inside_the_value_range_pass() -> None:
    decoded = decode_inputs({"items": [[0, 99, 5]]}, ITEMS, max_bytes=10_000)
    assert decoded["items"].tolist() == [[0, 99, 5]]


def test_float_values_and_nan_against_a_value_range() -> None:
    spec = (bounded_spec("x", "float32", (2,), value_range=(0, 1)),)
    decode_inputs({"x": [0.0, 0.5]}, spec, max_bytes=100)
    with pytest.raises(InvalidInputError, match=r"value nan at \[1\]"):
        decode_inputs({"x": [0.5, float("nan")]}, spec, max_bytes=100)


def test_named_dimensions_are_bounded_by_dim_max_before_decoding() -> None:
    tensor = {"dtype": "int64", "shape": [1, 9], "data": "not decoded"}
    with pytest.raises(InvalidInputError, match="'seq' is 9, the model takes at most 8"):
        decode_inputs({"items": tensor}, ITEMS, max_bytes=10_000)
    decode_inputs({"items": [[1] * 8]}, ITEMS, max_bytes=10_000)
