"""What a worker does with a task message before the pool sees it: the size-limited JSON
decoder, the tasks' own argument checks, and answers for every Exception; and the client's
size check before it sends anything."""

from __future__ import annotations

import json

import pytest
import torch
from kombu import serialization

from warmstart.infra.celery_app import RefusedMessage, install_message_limit, limited_json_loads
from warmstart.infra.errors import InvalidInputError, PayloadTooLargeError, UnknownModelError
from warmstart.workers.client import check_request_size
from warmstart.workers.tasks import INFER_ARGS, PREWARM_ARGS, _answer, bind_arguments
from warmstart.workers.wire import encode_tensor


def refusal(decoded: object) -> Exception:
    args, kwargs, embed = decoded  # type: ignore[misc]
    assert kwargs == {} and embed == {} and isinstance(args[0], RefusedMessage)
    return args[0].error


def test_a_message_over_the_limit_is_refused_without_decoding() -> None:
    loads = limited_json_loads(1000)
    # Not even JSON: decoding it would fail, so the refusal proves it was not decoded.
    error = refusal(loads(b"[" * 1001))
    assert isinstance(error, PayloadTooLargeError) and "WARMSTART_MAX_MESSAGE_BYTES" in str(error)
    assert loads(json.dumps([[], {"model": "m"}, {}]).encode()) == [[], {"model": "m"}, {}]


def test_json_nested_too_deeply_is_refused_not_raised() -> None:
    error = refusal(limited_json_loads(10**6)(b"[" * 100_000 + b"]" * 100_000))
    assert isinstance(error, InvalidInputError) and "nested too deeply" in str(error)


def test_the_limit_replaces_kombus_json_decoder() -> None:
    try:
        install_message_limit(1000)
        error = refusal(serialization.loads(b"x" * 2000, "application/json", "utf-8"))
        assert isinstance(error, PayloadTooLargeError)
    finally:
        serialization.register_json()
    assert serialization.loads(b"[1]", "application/json", "utf-8") == [1]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {"model": "m"}, "missing a required argument: 'inputs'; it takes \\(model, inputs\\)"),
        ((), {"model": "m", "inputs": {}, "priority": 1}, "unexpected keyword argument 'priority'"),
        (("m", {}, 3), {}, "too many positional arguments"),
        (("m",), {"model": "m", "inputs": {}}, "multiple values for argument 'model'"),
    ],
)
def test_missing_or_unknown_arguments_are_named(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        bind_arguments("warmstart.infer", INFER_ARGS, args, kwargs)


def test_arguments_bind_by_name_or_position_with_defaults() -> None:
    assert bind_arguments("t", INFER_ARGS, ("m",), {"inputs": {"x": 1}}) == {"model": "m", "inputs": {"x": 1}}
    assert bind_arguments("t", PREWARM_ARGS, (), {"model": "m"}) == {
        "model": "m", "tier": "HOT", "version": None, "lazy": False,
    }  # fmt: skip


def test_a_refused_message_raises_its_own_error() -> None:
    with pytest.raises(PayloadTooLargeError, match="too big"):
        bind_arguments("t", INFER_ARGS, (RefusedMessage(PayloadTooLargeError("too big")),), {})


def test_every_exception_is_an_answer() -> None:
    def typed() -> dict:
        raise UnknownModelError("no such model")

    def bug() -> dict:
        raise IndexError("index 5000 is out of bounds for dimension 0 with size 4096")

    assert _answer("t", typed) == {"ok": False, "error": UnknownModelError("no such model").to_dict()}
    error = _answer("warmstart.infer", bug)["error"]
    assert error["type"] == "ModelExecutionError" and error["code"] == "model_execution"
    assert "IndexError" in error["message"] and "index 5000" in error["message"]
    assert _answer("t", lambda: {"a": 1}) == {"ok": True, "a": 1}


def test_only_what_is_not_an_exception_propagates() -> None:
    def interrupted() -> dict:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _answer("t", interrupted)


def test_the_client_refuses_tensors_over_the_payload_limit_before_encoding() -> None:
    # 4800 bytes: its base64 (6400 characters) was under the old "twice the limit" check.
    with pytest.raises(PayloadTooLargeError, match="WARMSTART_MAX_PAYLOAD_BYTES"):
        check_request_size({"x": torch.zeros(150, 8)}, max_payload_bytes=4096, max_message_bytes=2**20)
    declared = {"dtype": "float32", "shape": [10**9, 10**9], "data": ""}
    with pytest.raises(PayloadTooLargeError, match="WARMSTART_MAX_PAYLOAD_BYTES"):
        check_request_size({"x": declared}, max_payload_bytes=4096, max_message_bytes=2**20)
    check_request_size({"x": torch.zeros(128, 8), "y": encode_tensor(torch.zeros(2))}, max_payload_bytes=4104,
                       max_message_bytes=2**20)  # fmt: skip


def test_the_client_refuses_a_message_over_the_broker_limit() -> None:
    nested = [[0.123456789] * 8 for _ in range(20_000)]  # ~2 MB of JSON, 640 KB of float32
    with pytest.raises(PayloadTooLargeError, match="WARMSTART_MAX_MESSAGE_BYTES"):
        check_request_size({"x": nested}, max_payload_bytes=8 * 2**20, max_message_bytes=2**20)
    check_request_size({"x": nested[:100]}, max_payload_bytes=8 * 2**20, max_message_bytes=2**20)
