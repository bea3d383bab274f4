"""Compiled models in the manifest, and signed compile artifacts in the store: an artifact is
returned only when its signature, made with the workers' key, binds exactly its bytes to its
model, version and platform; anything else is a typed error naming the fix."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from warmstart.infra.errors import CompileArtifactError, ManifestError
from warmstart.snapshot.compiled import (
    MAX_SIGNATURE_BYTES,
    artifact_keys,
    fetch_artifact,
    platform_key,
    push_artifact,
    sign,
    verify,
)
from warmstart.snapshot.manifest import parse_compile, parse_manifest
from warmstart.snapshot.stores.local import LocalStore
from tests.unit.snapshot.test_manifest import make_manifest, valid

KEY = b"k" * 32
PLATFORM = "torch-2.13.0-py311-x86_64-cpu"


def test_a_compile_spec_round_trips_and_is_left_out_when_unset() -> None:
    compiled = dataclasses.replace(make_manifest(), compile={"backend": "inductor", "mode": "max-autotune"})
    assert parse_manifest(compiled.to_json()) == compiled
    assert "compile" not in make_manifest().to_dict()  # older manifests keep their bytes


@pytest.mark.parametrize("raw, message", [
    ({"backend": "inductor"}, "must be"),
    ({"backend": "tvm", "mode": "default"}, "backend must be one of"),
    ({"backend": "inductor", "mode": "fast"}, "mode for backend inductor"),
    ({"backend": "eager", "mode": "max-autotune"}, "mode for backend eager must be one of default"),
    ("inductor", "must be"),
])  # fmt: skip
def test_a_bad_compile_spec_is_refused(raw: object, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_compile(raw)
    document = {**valid(), "compile": raw}
    with pytest.raises(ManifestError, match="compile"):
        parse_manifest(document)


def test_the_platform_key_is_a_safe_name_naming_torch_python_and_device() -> None:
    key = platform_key("cpu")
    assert key.startswith("torch-") and key.endswith("-cpu") and "-py3" in key
    assert platform_key("cuda:1").endswith("-cuda")
    assert artifact_keys("m", "v1", key) == (f"compiled/m/v1/{key}.bin", f"compiled/m/v1/{key}.sig.json")


def test_a_signature_binds_bytes_model_version_and_platform_to_the_key() -> None:
    data = b"compiled code"
    signature = sign(KEY, "m", "v1", PLATFORM, data)
    verify(KEY, signature, "m", "v1", PLATFORM, data)  # accepted
    with pytest.raises(CompileArtifactError, match="another key, or altered"):
        verify(b"x" * 32, signature, "m", "v1", PLATFORM, data)
    with pytest.raises(CompileArtifactError, match="not the ones signed"):
        verify(KEY, signature, "m", "v1", PLATFORM, data + b"!")
    for name, other in (("model", ("n", "v1", PLATFORM)), ("version", ("m", "v2", PLATFORM)),
                        ("platform", ("m", "v1", "torch-2.0-py311-arm64-cpu"))):  # fmt: skip
        with pytest.raises(CompileArtifactError, match=f"signed for {name}"):
            verify(KEY, signature, *other, data)
    forged = {**signature, "sha256": "0" * 64}  # a changed field no longer matches the MAC
    with pytest.raises(CompileArtifactError, match="another key, or altered"):
        verify(KEY, forged, "m", "v1", PLATFORM, data)
    for bad in ({}, [], {**signature, "alg": "none"}, {**signature, "extra": 1}):
        with pytest.raises(CompileArtifactError):
            verify(KEY, bad, "m", "v1", PLATFORM, data)


def test_fetch_returns_only_signed_artifacts(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    assert fetch_artifact(store, KEY, "m", "v1", PLATFORM) is None  # none pushed
    push_artifact(store, KEY, "m", "v1", PLATFORM, b"code")
    assert fetch_artifact(store, KEY, "m", "v1", PLATFORM) == b"code"
    with pytest.raises(CompileArtifactError, match="does not match the workers' key"):
        fetch_artifact(store, b"y" * 32, "m", "v1", PLATFORM)

    bin_key, sig_key = artifact_keys("m", "v1", PLATFORM)
    store.put_bytes(bin_key, b"other code")  # replaced, signature kept
    with pytest.raises(CompileArtifactError, match="not the ones signed"):
        fetch_artifact(store, KEY, "m", "v1", PLATFORM)
    store.delete(sig_key)  # unsigned
    with pytest.raises(CompileArtifactError, match="has no signature"):
        fetch_artifact(store, KEY, "m", "v1", PLATFORM)
    store.put_bytes(sig_key, b"not json")
    with pytest.raises(CompileArtifactError, match="not JSON"):
        fetch_artifact(store, KEY, "m", "v1", PLATFORM)
    store.put_bytes(sig_key, b" " * (MAX_SIGNATURE_BYTES + 1))  # refused before it is read
    with pytest.raises(CompileArtifactError, match="not a signature"):
        fetch_artifact(store, KEY, "m", "v1", PLATFORM)
    # Another model's signed artifact copied under this name is refused.
    push_artifact(store, KEY, "n", "v1", PLATFORM, b"code")
    store.put_bytes(bin_key, b"code")
    store.put_bytes(sig_key, store.get_bytes(artifact_keys("n", "v1", PLATFORM)[1]))
    with pytest.raises(CompileArtifactError, match="signed for model 'n'"):
        fetch_artifact(store, KEY, "m", "v1", PLATFORM)
    assert json.loads(store.get_bytes(sig_key))["alg"] == "HMAC-SHA256"


def test_publish_refuses_compile_for_the_examples_and_a_mode_it_does_not_know(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from warmstart.cli import main

    env = {"WARMSTART_STORE_URL": f"file://{tmp_path / 'store'}", "WARMSTART_CACHE_DIR": str(tmp_path / "cache")}
    examples = CliRunner().invoke(main, ["publish", "--example", "short-form", "--compile", "inductor"], env=env)
    assert examples.exit_code == 2 and "--compile applies to MODEL" in examples.output
    backend = CliRunner().invoke(main, ["publish", "m", "--compile", "tvm"], env=env)
    assert backend.exit_code == 2 and "tvm" in backend.output
