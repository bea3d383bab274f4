"""Golden inputs and outputs: normalising outputs, generating inputs, the file, the comparison."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from warmstart.infra.errors import SafetensorsHeaderError, SnapshotError
from warmstart.snapshot.golden import (
    DYNAMIC_DIM_SIZE,
    compare_outputs,
    load_golden,
    make_golden_inputs,
    normalize_outputs,
    read_input_file,
    write_golden,
)
from warmstart.snapshot.manifest import GoldenInfo, InputSpec


def test_normalize_outputs() -> None:
    t = torch.ones(2)
    assert normalize_outputs(t) == {"output": t}
    out = normalize_outputs((t, t * 2))
    assert list(out) == ["output0", "output1"]
    assert normalize_outputs([t])["output0"] is t
    assert normalize_outputs({"a": t, "b": t})["b"] is t


@pytest.mark.parametrize(
    ("value", "match"),
    [(None, "NoneType"), (3.0, "float"), ((), "tuple"), ([torch.ones(1), "x"], r"\[Tensor, str\]"),
     ({}, "dict"), ({"a": [torch.ones(1)]}, "list"), ({1: torch.ones(1)}, "dict"),
     ((torch.ones(1), (torch.ones(1),)), "tuple")],
)  # fmt: skip
def test_normalize_outputs_refuses_others(value: object, match: str) -> None:
    with pytest.raises(SnapshotError, match=match):
        normalize_outputs(value)


SPECS = (
    InputSpec("x", "float32", ("batch", 3)),
    InputSpec("ids", "int64", ("batch", "seq")),
    InputSpec("mask", "bool", (5,)),
    InputSpec("h", "bfloat16", (2,)),
)


def test_make_golden_inputs() -> None:
    inputs = make_golden_inputs(SPECS, seed=0, batch=3)
    assert inputs["x"].shape == (3, 3) and inputs["x"].dtype == torch.float32
    assert inputs["ids"].shape == (3, DYNAMIC_DIM_SIZE) and inputs["ids"].dtype == torch.int64
    assert int(inputs["ids"].min()) >= 0 and int(inputs["ids"].max()) < 2
    assert inputs["mask"].dtype == torch.bool and inputs["h"].dtype == torch.bfloat16
    again = make_golden_inputs(SPECS, seed=0, batch=3)
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    other = make_golden_inputs(SPECS, seed=1, batch=3)
    assert not torch.equal(inputs["x"], other["x"])


def test_make_golden_inputs_stay_within_declared_limits() -> None:
    """Golden inputs are what the health check runs: they must be requests the spec allows."""
    specs = (
        InputSpec("ids", "int64", ("batch", "seq"), value_range=(100, 103), dim_max={"batch": 1, "seq": 2}),
        InputSpec("small", "int8", ("seq",), value_range=(-5, -4)),
    )
    inputs = make_golden_inputs(specs, seed=0, batch=3)
    assert inputs["ids"].shape == (1, 2)
    assert 100 <= int(inputs["ids"].min()) and int(inputs["ids"].max()) < 103
    assert inputs["small"].shape == (DYNAMIC_DIM_SIZE,) and bool((inputs["small"] == -5).all())


def test_make_golden_inputs_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    make_golden_inputs(SPECS)
    assert torch.equal(torch.rand(1), expected)


def _info(path: Path, inputs: tuple[str, ...] = ("x",), outputs: tuple[str, ...] = ("output",)) -> GoldenInfo:
    return GoldenInfo("golden.safetensors", path.stat().st_size, "0" * 64, inputs, outputs, 1e-4, 1e-5)


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "golden.safetensors"
    x = torch.randn(2, 3)
    y = torch.randn(2, 4)[:, ::2]  # not contiguous: written anyway
    write_golden(path, {"x": x}, {"output": y})
    inputs, outputs = load_golden(path, _info(path))
    assert torch.equal(inputs["x"], x) and torch.equal(outputs["output"], y)


def test_load_golden_refuses_disagreement(tmp_path: Path) -> None:
    path = tmp_path / "golden.safetensors"
    write_golden(path, {"x": torch.ones(1)}, {"output": torch.ones(1)})
    with pytest.raises(SafetensorsHeaderError, match="manifest records inputs"):
        load_golden(path, _info(path, inputs=("y",)))
    with pytest.raises(SafetensorsHeaderError, match="manifest records inputs"):
        load_golden(path, _info(path, outputs=("output", "extra")))
    with pytest.raises(SafetensorsHeaderError, match="bytes but the manifest"):
        load_golden(path, GoldenInfo("golden.safetensors", 3, "0" * 64, ("x",), ("output",), 0, 0))
    with pytest.raises(SafetensorsHeaderError, match="cannot be read"):
        load_golden(tmp_path / "missing", _info(path))


def test_load_golden_refuses_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "golden.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(SafetensorsHeaderError, match="not valid safetensors"):
        load_golden(path, _info(path))


def test_read_input_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "in.safetensors"
    save_file({"x": torch.ones(1), "input.y": torch.zeros(1)}, str(path))
    assert sorted(read_input_file(path)) == ["x", "y"]
    path.write_bytes(b"garbage")
    with pytest.raises(SafetensorsHeaderError):
        read_input_file(path)


# --- comparison -------------------------------------------------------------------------


def test_compare_identical_and_within_tolerance() -> None:
    e = {"output": torch.tensor([1.0, 2.0, 3.0])}
    check = compare_outputs(dict(e), e, rtol=1e-4, atol=1e-5)
    assert check.ok and check.max_abs_err == 0 and check.reason == ""
    near = {"output": torch.tensor([1.0, 2.0001, 3.0])}
    check = compare_outputs(near, e, rtol=1e-3, atol=0)
    assert check.ok and 0 < check.max_abs_err < 2e-4


def test_compare_out_of_tolerance() -> None:
    check = compare_outputs({"o": torch.tensor([1.0, 2.5])}, {"o": torch.tensor([1.0, 2.0])}, 1e-4, 1e-5)
    assert not check.ok and check.max_abs_err == pytest.approx(0.5)
    assert "'o'" in check.reason and "0.5" in check.reason


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_fails(bad: float) -> None:
    check = compare_outputs({"o": torch.tensor([1.0, bad])}, {"o": torch.tensor([1.0, 2.0])}, 1.0, 1.0)
    assert not check.ok and "non-finite" in check.reason and math.isinf(check.max_abs_err)
    assert check.to_dict()["max_abs_err"] is None


def test_structural_mismatches_fail_with_a_reason() -> None:
    e = {"o": torch.zeros(2, 3)}
    cases = {
        "missing ['o']": {"p": torch.zeros(2, 3)},
        "unexpected ['p']": {"o": torch.zeros(2, 3), "p": torch.zeros(1)},
        "shape [3, 2]": {"o": torch.zeros(3, 2)},
        "dtype torch.float64": {"o": torch.zeros(2, 3, dtype=torch.float64)},
        "not a tensor": {"o": [0.0]},
    }
    for needle, actual in cases.items():
        check = compare_outputs(actual, e, 1e-4, 1e-5)  # type: ignore[arg-type]
        assert not check.ok and needle in check.reason, (needle, check.reason)


def test_compare_integer_outputs_exactly() -> None:
    e = {"best": torch.tensor([1, 2])}
    assert compare_outputs({"best": torch.tensor([1, 2])}, e, 0, 0).ok
    assert not compare_outputs({"best": torch.tensor([1, 3])}, e, 0, 0).ok


def test_compare_empty_outputs() -> None:
    assert compare_outputs({"o": torch.zeros(0)}, {"o": torch.zeros(0)}, 0, 0).ok
