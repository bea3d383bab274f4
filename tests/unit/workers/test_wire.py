import base64

import pytest
import torch

from warmstart.infra.errors import InvalidInputError, NonFiniteOutputError, PayloadTooLargeError
from warmstart.snapshot.manifest import InputSpec
from warmstart.workers.wire import check_finite, decode_inputs, decode_outputs, encode_tensor, encode_tensors

SPECS = (InputSpec("ids", "int64", ("batch", "seq")), InputSpec("mask", "int64", ("batch", "seq")),
         InputSpec("dense", "float32", ("batch", 4)))  # fmt: skip


def payload(batch: int = 2, seq: int = 5) -> dict:
    return encode_tensors({
        "ids": torch.arange(batch * seq).reshape(batch, seq),
        "mask": torch.ones(batch, seq, dtype=torch.int64),
        "dense": torch.randn(batch, 4),
    })  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                                   torch.int32, torch.int8, torch.uint8, torch.bool])  # fmt: skip
def test_every_dtype_round_trips_bit_exactly(dtype: torch.dtype) -> None:
    tensor = (torch.randn(3, 4) * 50).to(dtype)
    back = decode_outputs({"t": encode_tensor(tensor)})["t"]
    assert back.dtype == dtype and torch.equal(back, tensor)


def test_wire_bytes_are_little_endian_row_major() -> None:
    encoded = encode_tensor(torch.tensor([[1, 2]], dtype=torch.int32))
    assert base64.b64decode(encoded["data"]) == b"\x01\x00\x00\x00\x02\x00\x00\x00"
    assert encoded["shape"] == [1, 2] and encoded["dtype"] == "int32"


def test_valid_inputs_decode_and_lists_take_the_spec_dtype() -> None:
    decoded = decode_inputs(payload(), SPECS, max_bytes=10_000)
    assert decoded["ids"].shape == (2, 5)
    lists = {"ids": [[1, 2]], "mask": [[1, 1]], "dense": [[0.5, 1, 2, 3]]}
    decoded = decode_inputs(lists, SPECS, max_bytes=10_000)
    assert decoded["ids"].dtype == torch.int64 and decoded["dense"].dtype == torch.float32


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.pop("mask"), "missing"),
        (lambda p: p.update(extra=p["ids"]), "unexpected"),
        (lambda p: p["dense"].update(dtype="float64"), "float64"),
        (lambda p: p["dense"].update(dtype="complex"), "dtype"),
        (lambda p: p["dense"].update(data="!!"), "base64"),
        (lambda p: p["dense"].update(data=base64.b64encode(b"\0" * 24).decode()), "24 bytes of data"),
        (lambda p: p["dense"].update(shape=[2, 5]), "size 5 at dimension 1"),
        (lambda p: p["mask"].update(encode_tensor(torch.ones(2, 6, dtype=torch.int64))), "dimension 'seq'"),
        (lambda p: p["dense"].update(encode_tensor(torch.ones(2, 3))), "dimension 1"),
        (lambda p: p["dense"].update(encode_tensor(torch.ones(2, 4, 1))), "dimensions"),
        (lambda p: p.update(dense="text"), "tensor object"),
        (lambda p: p.update(dense=[[1, 2], [3]]), "rectangular"),
    ],
)
def test_bad_inputs_name_what_is_wrong(mutate, message: str) -> None:  # noqa: ANN001
    p = payload()
    mutate(p)
    with pytest.raises(InvalidInputError, match=message):
        decode_inputs(p, SPECS, max_bytes=10_000)


def test_non_object_inputs_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="JSON object"):
        decode_inputs([1, 2], SPECS, max_bytes=10_000)


def test_payload_limits() -> None:
    with pytest.raises(PayloadTooLargeError, match="WARMSTART_MAX_PAYLOAD_BYTES"):
        decode_inputs(payload(batch=100), SPECS, max_bytes=1000)


def test_non_finite_outputs_are_caught() -> None:
    check_finite({"a": torch.ones(2), "ids": torch.ones(2, dtype=torch.int64)}, "m")
    with pytest.raises(NonFiniteOutputError, match="'b'"):
        check_finite({"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")])}, "m")
