"""Hugging Face folders: publish unchanged, restore strictly with recorded skip_keys, choose
outputs, and refuse bad folders with typed errors naming the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from warmstart.infra.errors import HFFolderError, ManifestError, RestoreError
from warmstart.snapshot.manifest import parse_manifest
from warmstart.snapshot.publish import publish_file, publish_module, sha256_file
from warmstart.snapshot.restore import restore_model
from warmstart.snapshot.stores import LocalStore
from tests.unit.snapshot import tiny_models as tiny

transformers = pytest.importorskip("transformers")
from warmstart.snapshot.hf import FACTORY, publish_hf_folder  # noqa: E402

CONFIG = {
    "architectures": ["BertModel"], "model_type": "bert", "vocab_size": 97, "hidden_size": 16,
    "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
    "max_position_embeddings": 24, "type_vocab_size": 2, "pad_token_id": 0,
}  # fmt: skip


def make_folder(path: Path, *, with_position_ids: bool = True, config: dict | None = None) -> Path:  # type: ignore[type-arg]
    """A folder as an older transformers saved it: the weights include position_ids."""
    path.mkdir(parents=True)
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**CONFIG)).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if with_position_ids:
        state["embeddings.position_ids"] = torch.arange(CONFIG["max_position_embeddings"]).unsqueeze(0)
    save_file(state, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config or CONFIG))
    return path


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_hf_folder_is_published_unchanged_and_restores_strictly(store: LocalStore, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "hf")
    manifest = publish_hf_folder(store, "bert", "v1", folder, outputs=["last_hidden_state"], show_progress=False)
    assert manifest.weights.sha256 == sha256_file(folder / "model.safetensors")
    assert manifest.architecture.factory == FACTORY and manifest.architecture.kwargs["config"] == CONFIG
    assert manifest.skip_keys == ("embeddings.position_ids",)
    assert manifest.outputs == manifest.golden.outputs == ("last_hidden_state",)
    raw = json.loads(store.get_bytes("snapshots/bert/v1/manifest.json"))
    assert raw["skip_keys"] == {"rule": "non_persistent_buffers", "keys": ["embeddings.position_ids"]}
    ids_spec = manifest.input_spec("input_ids")
    assert ids_spec is not None and ids_spec.value_range == (0, 97) and ids_spec.dim_max == {"seq": 24}

    module = restore_model(folder / "model.safetensors", manifest)
    ids = torch.tensor([[5, 17, 96, 3]])
    out = module(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert set(out) == {"last_hidden_state"}
    reference = transformers.BertModel.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        expected = reference(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    torch.testing.assert_close(out["last_hidden_state"], expected)


def test_golden_ids_span_the_vocabulary(store: LocalStore, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "hf")
    manifest = publish_hf_folder(store, "bert", "v1", folder, outputs=["pooler_output"], show_progress=False)
    golden = tmp_path / "golden.safetensors"
    golden.write_bytes(store.get_bytes("snapshots/bert/v1/golden.safetensors"))
    from warmstart.snapshot.golden import load_golden

    inputs, _ = load_golden(golden, manifest.golden)
    assert int(inputs["input_ids"].max()) > 2  # not ids drawn from [0, 2)
    assert int(inputs["attention_mask"][0].min()) == 1  # the first row is a whole sentence


def test_a_file_with_computed_buffers_is_refused_without_the_rule_and_the_architecture_not_blamed(
    store: LocalStore, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "hf")
    with pytest.raises(RestoreError) as caught:
        publish_file(
            store, "bert", "v1", folder / "model.safetensors", {"factory": FACTORY, "kwargs": {"config": CONFIG}},
            [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "value_range": [0, 97]}],
            outputs=["last_hidden_state"], show_progress=False,
        )  # fmt: skip
    message = str(caught.value)
    assert "embeddings.position_ids" in message and "architecture is right" in message
    assert not store.list_keys("snapshots/")


def test_a_real_mismatch_says_what_is_missing_and_extra(store: LocalStore, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "hf", with_position_ids=False)
    wrong = dict(CONFIG, num_hidden_layers=2)
    with pytest.raises(RestoreError) as caught:
        publish_file(
            store, "bert", "v1", folder / "model.safetensors", {"factory": FACTORY, "kwargs": {"config": wrong}},
            [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "value_range": [0, 97]}],
            outputs=["last_hidden_state"], show_progress=False, skip_non_persistent=True,
        )  # fmt: skip
    message = str(caught.value)
    assert "missing" in message and "encoder.layer.1." in message and "architecture is right" not in message


def test_skip_keys_that_are_not_computed_buffers_are_refused_at_restore(store: LocalStore, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "hf")
    manifest = publish_hf_folder(store, "bert", "v1", folder, outputs=["last_hidden_state"], show_progress=False)
    raw = manifest.to_dict()
    raw["skip_keys"]["keys"] = ["embeddings.word_embeddings.weight"]
    with pytest.raises(RestoreError, match="no such non-persistent buffer"):
        restore_model(folder / "model.safetensors", parse_manifest(raw))


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda p: (p / "config.json").unlink(), "config.json is missing"),
        (lambda p: (p / "config.json").write_text("[1]"), "model_type"),
        (lambda p: (p / "config.json").write_text(json.dumps(dict(CONFIG, architectures=["NoSuchModel"]))),
         "not a model class"),
        (lambda p: ((p / "model.safetensors").rename(p / "model-00001-of-00001.safetensors"),
                    (p / "model.safetensors.index.json").write_text("{}")), "'weight_map' object"),
        (lambda p: (p / "model.safetensors").unlink(), "model.safetensors is missing"),
    ],
)
def test_bad_folders_are_typed_errors_and_publish_nothing(store: LocalStore, tmp_path: Path, setup, match: str) -> None:  # type: ignore[no-untyped-def]
    folder = make_folder(tmp_path / "hf")
    setup(folder)
    with pytest.raises(HFFolderError, match=match):
        publish_hf_folder(store, "bert", "v1", folder, show_progress=False)
    assert not store.list_keys("snapshots/")


def test_an_output_the_model_does_not_return_names_outputs(store: LocalStore, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "hf")
    with pytest.raises(ManifestError, match="--outputs") as caught:
        publish_hf_folder(store, "bert", "v1", folder, outputs=["logits"], show_progress=False)
    assert "last_hidden_state" in str(caught.value)
    assert not store.list_keys("snapshots/")


def test_dict_outputs_can_be_chosen_and_the_manifest_records_them(store: LocalStore) -> None:
    m = publish_module(
        store, "dicty", "v1", tiny.build_dict_output(), tiny.DICT_OUT, tiny.MLP_INPUTS,
        outputs=["best"], show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
    )  # fmt: skip
    assert m.outputs == m.golden.outputs == ("best",)
    assert parse_manifest(m.to_json()) == m


def test_integer_inputs_without_a_range_ask_for_golden_inputs(store: LocalStore) -> None:
    inputs = [{"name": "ids", "dtype": "int64", "shape": ["batch", "seq"]}]
    with pytest.raises(ManifestError, match="--golden-inputs"):
        publish_module(store, "tied", "v1", tiny.build_tiny_tied(), tiny.TIED, inputs,
                       show_progress=False, allowed_architectures=tiny.TINY_FACTORIES)  # fmt: skip


def test_cli_publishes_a_folder_and_names_the_missing_config(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from warmstart.cli import main

    folder = make_folder(tmp_path / "hf")
    monkeypatch.setenv("WARMSTART_STORE_URL", f"file://{tmp_path / 'store'}")
    ok = CliRunner().invoke(main, ["publish", "bert", "--hf-dir", str(folder), "--outputs", "last_hidden_state", "--json"])
    assert ok.exit_code == 0, ok.output
    manifest = parse_manifest(json.dumps(json.loads(ok.output)[0]))
    assert manifest.version == "v1" and manifest.outputs == ("last_hidden_state",)
    (folder / "config.json").unlink()
    bad = CliRunner().invoke(main, ["publish", "other", "--hf-dir", str(folder)])
    assert bad.exit_code == 2 and "HFFolderError" in bad.output and "config.json is missing" in bad.output


def test_an_architecture_needing_a_missing_extra_is_not_registered(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from warmstart.snapshot import registry

    assert registry._installed(["hf"])  # transformers is installed here
    monkeypatch.setitem(registry.EXTRA_MODULES, "hf", ("no_such_module_for_warmstart",))
    assert not registry._installed(["hf"])
    registry.registered_factories.cache_clear()
    try:
        assert FACTORY not in registry.registered_factories()
        assert "warmstart.snapshot.examples:build_recsys_model" in registry.registered_factories()
    finally:
        registry.registered_factories.cache_clear()


def test_a_config_asking_for_huge_computed_buffers_is_refused_before_building() -> None:
    from warmstart.snapshot.hf import build_hf_model

    with pytest.raises(ValueError, match="max_position_embeddings"):
        build_hf_model(dict(CONFIG, max_position_embeddings=10**12))
