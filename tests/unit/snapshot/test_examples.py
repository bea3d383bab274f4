"""The example models: the five-model recommendation system and the transformer encoder."""

from __future__ import annotations

import json

import pytest
import torch

from warmstart.snapshot.examples import (
    EXAMPLE_MODELS,
    RECSYS_NAMES,
    recsys_example,
    recsys_examples,
    transformer_encoder_kwargs,
    transformer_example,
    transformer_param_count,
)
from warmstart.snapshot.manifest import parse_manifest
from warmstart.snapshot.restore import module_nbytes, parameters_on_meta

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def built() -> dict[str, torch.nn.Module]:
    return {name: example.build() for name, example in EXAMPLE_MODELS.items()}


def test_five_models_with_traffic_shares_summing_to_one() -> None:
    assert list(EXAMPLE_MODELS) == ["short-form", "long-form", "premium", "kids", "live-events"]
    shares = {name: e.traffic_share for name, e in EXAMPLE_MODELS.items()}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["short-form"] > shares["long-form"] > shares["premium"] > shares["kids"] > shares["live-events"] > 0
    assert [n for n, e in EXAMPLE_MODELS.items() if e.eager] == ["short-form", "long-form", "premium"]


def test_sizes_are_ordered_as_documented(built: dict[str, torch.nn.Module]) -> None:
    sizes = {name: module_nbytes(module) for name, module in built.items()}
    order = ["premium", "long-form", "short-form", "kids", "live-events"]
    assert sorted(sizes, key=sizes.get, reverse=True) == order
    assert all(1 * MiB <= size <= 40 * MiB for size in sizes.values()), sizes


@pytest.mark.parametrize("name", RECSYS_NAMES)
def test_each_recsys_model_runs_its_golden_inputs(name: str, built: dict[str, torch.nn.Module]) -> None:
    example = EXAMPLE_MODELS[name]
    inputs = example.golden_inputs(seed=1, batch=3)
    assert set(inputs) == {"user_features", "item_ids"} and len(example.inputs) >= 2
    ids = inputs["item_ids"]
    assert ids.dtype == torch.int64 and ids.shape == (3, 20)
    assert 0 <= ids.min() and ids.max() < example.architecture.kwargs["num_items"]
    with torch.inference_mode():
        out = built[name](**inputs)
    assert out.shape == (3, example.architecture.kwargs["num_items"]) and torch.isfinite(out).all()


def test_recsys_family_has_a_tied_weight_and_a_non_persistent_buffer(built: dict[str, torch.nn.Module]) -> None:
    model = built["kids"]
    assert model.score.weight is model.item_embedding.weight
    assert "recency" in dict(model.named_buffers()) and "recency" not in model.state_dict()


def test_golden_inputs_are_deterministic_per_seed() -> None:
    example = EXAMPLE_MODELS["short-form"]
    a, b, c = example.golden_inputs(seed=5), example.golden_inputs(seed=5), example.golden_inputs(seed=6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["user_features"], c["user_features"])


def test_specs_fit_the_manifest_format() -> None:
    for example in [*EXAMPLE_MODELS.values(), transformer_example(1)]:
        json.dumps(example.architecture.kwargs)  # kwargs travel in manifest.json
        manifest = {
            "format": "warmstart.snapshot", "format_version": 1, "model": example.name, "version": "v1",
            "created_at": "2026-11-27T00:00:00Z",
            "architecture": {"factory": example.architecture.factory, "kwargs": example.architecture.kwargs},
            "weights": {"file": "model.safetensors", "size_bytes": 8, "sha256": "0" * 64, "header_bytes": 0, "tensors": []},
            "inputs": [s.to_dict() for s in example.inputs],
            "golden": {"file": "golden.safetensors", "size_bytes": 1, "sha256": "0" * 64,
                       "inputs": [s.name for s in example.inputs], "outputs": ["output"], "rtol": 0, "atol": 0},
        }  # fmt: skip
        assert parse_manifest(manifest).inputs == example.inputs


def test_scale_makes_models_larger() -> None:
    small, large = recsys_example("kids", scale=1.0), recsys_example("kids", scale=3.0)
    assert large.architecture.kwargs["num_items"] == 3 * small.architecture.kwargs["num_items"]
    assert recsys_examples(0.5)["premium"].architecture.kwargs["num_items"] == 32_000
    with pytest.raises(ValueError):
        recsys_example("kids", scale=0)


def test_transformer_takes_ids_and_mask() -> None:
    example = transformer_example(1)
    inputs = example.golden_inputs(seed=0, batch=4)
    assert [s.name for s in example.inputs] == ["input_ids", "attention_mask"]
    assert inputs["input_ids"].max() < example.architecture.kwargs["vocab_size"]
    mask = inputs["attention_mask"]
    assert set(mask.unique().tolist()) <= {0, 1} and bool((mask[:, 0] == 1).all())
    model = example.build()
    with torch.inference_mode():
        out = model(**inputs)
    assert out.shape == (4, example.architecture.kwargs["d_model"]) and torch.isfinite(out).all()
    assert "positions" in dict(model.named_buffers()) and "positions" not in model.state_dict()


def test_padding_does_not_change_the_pooled_output() -> None:
    example = transformer_example(1)
    model = example.build()
    ids = example.golden_inputs(seed=2, batch=1)["input_ids"][:, :8]
    padded_ids = torch.cat([ids, torch.full((1, 4), 5)], dim=1)
    mask = torch.cat([torch.ones(1, 8, dtype=torch.int64), torch.zeros(1, 4, dtype=torch.int64)], dim=1)
    with torch.inference_mode():
        short = model(ids, torch.ones_like(ids))
        long = model(padded_ids, mask)
    torch.testing.assert_close(short, long, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size_mb", [1, 8, 64, 256, 512])
def test_transformer_kwargs_hit_the_target_size(size_mb: float) -> None:
    kwargs = transformer_encoder_kwargs(size_mb)
    assert transformer_param_count(**kwargs) * 4 == pytest.approx(size_mb * MiB, rel=0.02)
    assert kwargs["d_model"] % kwargs["num_heads"] == 0


def test_param_count_formula_matches_the_module() -> None:
    kwargs = transformer_encoder_kwargs(2)
    model = transformer_example(2).build()
    assert sum(p.numel() for p in model.parameters()) == transformer_param_count(**kwargs)


def test_factories_build_on_meta_with_real_buffers() -> None:
    with parameters_on_meta():
        encoder = transformer_example(1).build()
        recsys = EXAMPLE_MODELS["kids"].build()
    assert all(p.is_meta for p in (*encoder.parameters(), *recsys.parameters()))
    assert not encoder.positions.is_meta and not recsys.recency.is_meta
    assert recsys.score.weight is recsys.item_embedding.weight


def test_positional_table_is_a_plain_cpu_tensor() -> None:
    from warmstart.snapshot.examples import sinusoidal_positions

    with torch.device("meta"), torch.inference_mode():
        table = sinusoidal_positions(8, 4)
    assert table.device.type == "cpu" and not table.is_inference()
    assert table[0].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_nothing_is_cached_per_kwargs() -> None:
    """A table cached per (max_len, d_model) outlived its model and was counted by no one."""
    from warmstart.snapshot import examples

    assert not hasattr(examples.sinusoidal_positions, "cache_info")
    one, two = transformer_example(1).build(), transformer_example(1).build()
    assert torch.equal(one.positions, two.positions)
    assert one.positions.untyped_storage().data_ptr() != two.positions.untyped_storage().data_ptr()


@pytest.mark.parametrize(
    ("factory", "kwargs", "match"),
    [
        ("transformer", {"max_len": 4_000_000}, "max_len"),
        ("transformer", {"max_len": 0}, "max_len"),
        ("transformer", {"max_len": 512.0}, "max_len"),
        ("transformer", {"d_model": 8192, "num_heads": 8, "max_len": 8192}, "positional table"),
        ("transformer", {"num_layers": True}, "num_layers"),
        ("recsys", {"history_len": 10**9}, "history_len"),
        ("recsys", {"num_items": "many"}, "num_items"),
    ],
)  # fmt: skip
def test_factories_refuse_kwargs_that_would_allocate_unbounded_memory(
    factory: str, kwargs: dict[str, object], match: str
) -> None:
    """kwargs come from a manifest: a factory checks them before it allocates anything."""
    from warmstart.snapshot.examples import build_recsys_model, build_transformer_encoder

    build = build_transformer_encoder if factory == "transformer" else build_recsys_model
    with parameters_on_meta(), pytest.raises(ValueError, match=match):
        build(**kwargs)


def test_example_inputs_declare_their_limits() -> None:
    for example in EXAMPLE_MODELS.values():
        specs = {s.name: s for s in example.inputs}
        assert specs["item_ids"].value_range == (0, example.architecture.kwargs["num_items"])
        assert specs["user_features"].value_range is None
    encoder = transformer_example(1)
    specs = {s.name: s for s in encoder.inputs}
    assert specs["input_ids"].value_range == (0, encoder.architecture.kwargs["vocab_size"])
    assert specs["attention_mask"].value_range == (0, 2)
    max_len = encoder.architecture.kwargs["max_len"]
    assert specs["input_ids"].dim_max == {"seq": max_len} == specs["attention_mask"].dim_max


def test_golden_inputs_respect_the_declared_limits() -> None:
    for example in [*EXAMPLE_MODELS.values(), transformer_example(1)]:
        inputs = example.golden_inputs(seed=3, batch=4)
        for spec in example.inputs:
            if spec.value_range is not None:
                low, high = spec.value_range
                assert low <= int(inputs[spec.name].min()) and int(inputs[spec.name].max()) < high


def test_build_with_a_seed_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    example = EXAMPLE_MODELS["live-events"]
    state = torch.random.get_rng_state()
    a, b = example.build(seed=7), example.build(seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(example.build(seed=8).user_proj.weight, a.user_proj.weight)
