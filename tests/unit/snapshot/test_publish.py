"""Publishing to a local store: files, manifest, aliases, immutability, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model

from warmstart.infra.errors import (
    InvalidNameError,
    ManifestError,
    SafetensorsHeaderError,
    SnapshotError,
    SnapshotNotFoundError,
    StoreError,
    UnregisteredArchitectureError,
    VersionExistsError,
)
from warmstart.snapshot import catalog
from warmstart.snapshot.golden import load_golden
from warmstart.snapshot.manifest import parse_manifest
from warmstart.snapshot.publish import publish_file, publish_module, sha256_file
from warmstart.snapshot.stores import LocalStore
from tests.unit.snapshot import tiny_models as tiny


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def publish(store: LocalStore, version: str = "v1", seed: int = 0, inputs_override: object = None, **kwargs: object):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    options = {"show_progress": False, "allowed_architectures": tiny.TINY_FACTORIES, **kwargs}
    inputs = tiny.MLP_INPUTS if inputs_override is None else inputs_override
    return publish_module(store, "tiny", version, tiny.build_tiny_mlp(), tiny.MLP, inputs, **options)  # type: ignore[arg-type]


def test_publish_writes_a_complete_snapshot(store: LocalStore, tmp_path: Path) -> None:
    manifest = publish(store, metadata={"team": "x"})
    keys = store.list_keys("snapshots/tiny/")
    assert keys == [
        "snapshots/tiny/_aliases/live.json", "snapshots/tiny/v1/golden.safetensors",
        "snapshots/tiny/v1/manifest.json", "snapshots/tiny/v1/model.safetensors",
    ]  # fmt: skip
    assert parse_manifest(store.get_bytes("snapshots/tiny/v1/manifest.json")) == manifest
    assert manifest.metadata == {"team": "x"}
    assert manifest.architecture.factory == tiny.MLP
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(store.get_bytes("snapshots/tiny/v1/model.safetensors"))
    assert sha256_file(weights) == manifest.weights.sha256
    assert weights.stat().st_size == manifest.weights.size_bytes
    assert {t.name for t in manifest.weights.tensors} == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    golden = tmp_path / "golden.safetensors"
    golden.write_bytes(store.get_bytes("snapshots/tiny/v1/golden.safetensors"))
    inputs, outputs = load_golden(golden, manifest.golden)
    assert inputs["x"].shape == (2, 4) and outputs["output"].shape == (2, 3)
    assert json.loads(store.get_bytes("snapshots/tiny/_aliases/live.json"))["version"] == "v1"


def test_golden_outputs_are_what_the_model_answers(store: LocalStore, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = tiny.build_tiny_mlp()
    x = torch.randn(3, 4)
    manifest = publish_module(
        store, "tiny", "v1", module, tiny.MLP, tiny.MLP_INPUTS, {"x": x},
        show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
    )  # fmt: skip
    path = tmp_path / "g.safetensors"
    path.write_bytes(store.get_bytes("snapshots/tiny/v1/golden.safetensors"))
    inputs, outputs = load_golden(path, manifest.golden)
    assert torch.equal(inputs["x"], x)
    assert torch.allclose(outputs["output"], module(x))


def test_dict_outputs_and_tied_weights(store: LocalStore, tmp_path: Path) -> None:
    m = publish_module(
        store, "dicty", "v1", tiny.build_dict_output(), tiny.DICT_OUT, tiny.MLP_INPUTS,
        show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
    )  # fmt: skip
    assert set(m.golden.outputs) == {"scores", "best"}
    m = publish_module(
        store, "tied", "v1", tiny.build_tiny_tied(), tiny.TIED, tiny.TIED_INPUTS,
        show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
    )  # fmt: skip
    assert len(m.weights.tensors) == 1  # the tied weight is stored once


def test_same_bytes_is_idempotent(store: LocalStore) -> None:
    first = publish(store)
    again = publish(store)
    assert again == first


def test_other_bytes_are_refused(store: LocalStore) -> None:
    first = publish(store, seed=0)
    with pytest.raises(VersionExistsError, match="immutable"):
        publish(store, seed=1)
    assert catalog.read_manifest(store, "tiny", "v1") == first


def test_live_alias_is_set_once(store: LocalStore) -> None:
    publish(store, "v1", seed=0)
    publish(store, "v2", seed=1)
    assert catalog.get_alias(store, "tiny") == "v1"  # rollouts move it, not publish
    catalog.set_alias(store, "tiny", "live", "v2")
    assert catalog.resolve_version(store, "tiny") == "v2"
    assert catalog.list_versions(store, "tiny") == ["v1", "v2"]


def test_set_live_false(store: LocalStore) -> None:
    publish(store, set_live=False)
    assert catalog.get_alias(store, "tiny") is None


def test_unregistered_architecture_uploads_nothing(store: LocalStore) -> None:
    with pytest.raises(UnregisteredArchitectureError, match="not registered"):
        publish_module(store, "tiny", "v1", tiny.build_tiny_mlp(), tiny.MLP, tiny.MLP_INPUTS, show_progress=False)
    assert store.list_keys("") == []


@pytest.mark.parametrize(("model", "version"), [("a/b", "v1"), ("..", "v1"), ("m", "../v1"), ("m", "v 1")])
def test_unsafe_names_upload_nothing(store: LocalStore, model: str, version: str) -> None:
    with pytest.raises(InvalidNameError):
        publish_module(
            store, model, version, tiny.build_tiny_mlp(), tiny.MLP, tiny.MLP_INPUTS,
            show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
        )  # fmt: skip
    assert store.list_keys("") == []


@pytest.mark.parametrize(
    ("factory", "match"),
    [(tiny.BAD_OUT, r"\[Tensor, str\]"), (tiny.NOISY, "reproducibly"), (tiny.NAN_OUT, "NaN")],
)
def test_models_that_cannot_pass_health_checks_are_refused(store: LocalStore, factory: str, match: str) -> None:
    module = {tiny.BAD_OUT: tiny.build_bad_output, tiny.NOISY: tiny.build_noisy, tiny.NAN_OUT: tiny.build_nan_output}[factory]()
    with pytest.raises(SnapshotError, match=match):
        publish_module(
            store, "bad", "v1", module, factory, tiny.MLP_INPUTS,
            show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
        )  # fmt: skip
    assert store.list_keys("") == []


def test_model_failing_on_its_inputs(store: LocalStore) -> None:
    with pytest.raises(SnapshotError, match="failed on its golden inputs"):
        publish_module(
            store, "tiny", "v1", tiny.build_tiny_mlp(), tiny.MLP,
            [{"name": "x", "dtype": "float32", "shape": ["batch", 5]}],
            show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
        )  # fmt: skip
    assert store.list_keys("") == []


@pytest.mark.parametrize(
    ("inputs", "golden", "match"),
    [
        ([], None, "at least one"),
        ([{"name": "x"}], None, "'name', 'dtype' and 'shape'"),
        ([{"name": "x", "dtype": "complex64", "shape": [1]}], None, "dtype"),
        (tiny.MLP_INPUTS, {"y": torch.ones(2, 4)}, "named exactly"),
        ([{"name": "x", "dtype": "float32", "shape": ["bad dim", 4]}], {"x": torch.ones(2, 4)}, "dimension names"),
    ],
)
def test_bad_inputs_are_refused(store: LocalStore, inputs: list, golden: dict | None, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ManifestError, match=match):
        publish_module(
            store, "tiny", "v1", tiny.build_tiny_mlp(), tiny.MLP, inputs, golden,
            show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
        )  # fmt: skip
    assert store.list_keys("") == []


class FailingStore(LocalStore):
    """Fails the upload of one file, as a dropped connection would."""

    def __init__(self, root: Path, fail_on: str) -> None:
        super().__init__(root)
        self.fail_on = fail_on

    def put_file(self, key, path, progress=None):  # type: ignore[no-untyped-def]
        if key.endswith(self.fail_on):
            raise StoreError(f"simulated failure uploading {key}")
        super().put_file(key, path, progress)


@pytest.mark.parametrize("fail_on", ["model.safetensors", "golden.safetensors"])
def test_interrupted_publish_leaves_no_version(tmp_path: Path, fail_on: str) -> None:
    store = FailingStore(tmp_path / "store", fail_on)
    with pytest.raises(StoreError, match="simulated"):
        publish(store)  # type: ignore[arg-type]
    assert catalog.list_versions(store, "tiny") == []
    assert catalog.list_models(store) == []
    assert catalog.get_alias(store, "tiny") is None
    with pytest.raises(SnapshotNotFoundError):
        catalog.read_manifest(store, "tiny", "v1")
    # And a retry with a working store succeeds.
    store.fail_on = "nothing"
    assert publish(store).version == "v1"  # type: ignore[arg-type]


def test_progress_callback_runs(store: LocalStore, capsys: pytest.CaptureFixture[str]) -> None:
    publish(store, show_progress=True)
    assert "tiny/v1" in capsys.readouterr().err


# --- publish_file -------------------------------------------------------------------------


def _weights_file(tmp_path: Path, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(seed)
    module = tiny.build_tiny_mlp()
    path = tmp_path / f"weights-{seed}.safetensors"
    save_model(module, str(path))
    return path, module


def test_publish_file_keeps_the_bytes(store: LocalStore, tmp_path: Path) -> None:
    path, module = _weights_file(tmp_path)
    x = torch.randn(2, 4)
    manifest = publish_file(
        store, "filed", "v1", path, {"factory": tiny.MLP, "kwargs": {}}, tiny.MLP_INPUTS, {"x": x},
        show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
    )  # fmt: skip
    assert store.get_bytes("snapshots/filed/v1/model.safetensors") == path.read_bytes()
    assert manifest.weights.sha256 == sha256_file(path)
    golden = tmp_path / "g.safetensors"
    golden.write_bytes(store.get_bytes("snapshots/filed/v1/golden.safetensors"))
    _, outputs = load_golden(golden, manifest.golden)
    assert torch.allclose(outputs["output"], module(x), atol=1e-6)


def test_publish_file_refuses_lying_header(store: LocalStore, tmp_path: Path) -> None:
    path, _ = _weights_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-4])  # truncated
    with pytest.raises(SafetensorsHeaderError):
        publish_file(
            store, "filed", "v1", path, tiny.MLP, tiny.MLP_INPUTS,
            show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
        )  # fmt: skip
    assert store.list_keys("") == []


def test_publish_file_missing_file(store: LocalStore, tmp_path: Path) -> None:
    with pytest.raises(SnapshotNotFoundError, match="does not exist"):
        publish_file(
            store, "filed", "v1", tmp_path / "nope.safetensors", tiny.MLP, tiny.MLP_INPUTS,
            show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
        )  # fmt: skip


def test_publish_file_wrong_architecture(store: LocalStore, tmp_path: Path) -> None:
    from warmstart.infra.errors import RestoreError

    path, _ = _weights_file(tmp_path)
    with pytest.raises(RestoreError):
        publish_file(
            store, "filed", "v1", path, {"factory": tiny.MLP, "kwargs": {"hidden": 16}}, tiny.MLP_INPUTS,
            show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
        )  # fmt: skip
    assert store.list_keys("") == []


def test_catalog_reads(store: LocalStore) -> None:
    publish(store, "v1")
    publish(store, "v10", seed=1)
    publish(store, "v2", seed=2)
    assert catalog.list_models(store) == ["tiny"]
    assert catalog.list_versions(store, "tiny") == ["v1", "v2", "v10"]
    assert catalog.resolve_version(store, "tiny", "v2") == "v2"
    assert catalog.list_aliases(store, "tiny") == {"live": "v1"}
    with pytest.raises(SnapshotNotFoundError, match=r"v3.*versions: \['v1', 'v2', 'v10'\]"):
        catalog.resolve_version(store, "tiny", "v3")
    with pytest.raises(SnapshotNotFoundError, match="published versions"):
        catalog.read_manifest(store, "tiny", "v3")
    with pytest.raises(SnapshotNotFoundError):
        catalog.set_alias(store, "tiny", "canary", "v3")
    summary = catalog.summarize(store)
    assert summary[0]["model"] == "tiny" and len(summary[0]["versions"]) == 3
    with pytest.raises(SnapshotNotFoundError):
        catalog.summarize(store, "other")


def test_catalog_refuses_misplaced_or_broken_objects(store: LocalStore) -> None:
    m = publish(store, "v1")
    store.put_bytes("snapshots/tiny/v9/manifest.json", m.to_json())  # says v1, lives at v9
    with pytest.raises(ManifestError, match="wrong place"):
        catalog.read_manifest(store, "tiny", "v9")
    store.put_bytes("snapshots/tiny/_aliases/live.json", b"{not json")
    with pytest.raises(ManifestError, match="alias"):
        catalog.get_alias(store, "tiny")
    store.put_bytes("snapshots/tiny/_aliases/live.json", b'{"version": "../x"}')
    with pytest.raises(ManifestError, match="unsafe"):
        catalog.resolve_version(store, "tiny")


def test_manifest_naming_unregistered_architecture_is_refused_at_restore(store: LocalStore, tmp_path: Path) -> None:
    """A manifest from a bucket that names an unregistered factory restores nothing."""
    from warmstart.snapshot.restore import restore_model

    m = publish(store)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(store.get_bytes("snapshots/tiny/v1/model.safetensors"))
    with pytest.raises(UnregisteredArchitectureError):
        restore_model(weights, m)  # the tiny factory is not in the entry-point group


def test_republish_restores_a_missing_live_alias(store: LocalStore) -> None:
    publish(store)
    store.delete("snapshots/tiny/_aliases/live.json")  # as if the first publish died before it
    publish(store)
    assert catalog.get_alias(store, "tiny") == "v1"


# --- input specs with limits ------------------------------------------------------------------


def test_input_limits_are_published(store: LocalStore) -> None:
    inputs = [{"name": "x", "dtype": "float32", "shape": ["batch", 4], "dim_max": {"batch": 64}}]
    manifest = publish(store, inputs_override=inputs)
    assert manifest.inputs[0].dim_max == {"batch": 64} and manifest.inputs[0].value_range is None
    published = json.loads(store.get_bytes("snapshots/tiny/v1/manifest.json"))
    assert published["inputs"] == inputs


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "x", "dtype": "float32", "shape": ["batch", 4], "value_range": (0, 10)}, "integer dtypes"),
        ({"name": "x", "dtype": "float32", "shape": ["batch", 4], "dim_max": {"seq": 8}}, "not a dynamic dimension"),
        ({"name": "x", "dtype": "float32", "shape": ["batch", 4], "dim_max": {"batch": 0}}, ">= 1"),
        ({"name": "x", "dtype": "float32", "shape": ["batch", 4], "valuerange": (0, 1)}, "unknown"),
        ({"name": "x\n", "dtype": "float32", "shape": ["batch", 4]}, "identifier"),
        ({"name": "x", "dtype": "float32", "shape": ["batch"] * 65}, "65 dimensions"),
    ],
)  # fmt: skip
def test_as_input_specs_checks_limits_strictly(spec: dict[str, object], match: str) -> None:
    from warmstart.snapshot.publish import as_input_specs

    with pytest.raises(ManifestError, match=match):
        as_input_specs([spec])


def test_as_input_specs_checks_spec_objects_too() -> None:
    from warmstart.snapshot.manifest import InputSpec
    from warmstart.snapshot.publish import as_input_specs

    good = InputSpec("ids", "int64", ("batch", 8), value_range=(0, 100), dim_max={"batch": 32})
    assert as_input_specs([good]) == (good,)
    assert as_input_specs([{"name": "ids", "dtype": "int64", "shape": ("batch", 8), "value_range": (0, 100),
                            "dim_max": {"batch": 32}}]) == (good,)  # fmt: skip
    with pytest.raises(ManifestError, match="integer dtypes"):
        as_input_specs([InputSpec("x", "float32", ("batch",), value_range=(0, 1))])
    with pytest.raises(ManifestError, match="low < high"):
        as_input_specs([InputSpec("x", "int32", ("batch",), value_range=(3, 3))])
