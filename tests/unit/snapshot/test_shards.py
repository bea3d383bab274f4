"""Sharded snapshots: the index of a Hugging Face folder checked with plain values, the format
version 2 manifest, and a sharded folder published unchanged, fetched shard by shard, and
restored from several mappings; bad folders are typed errors that publish nothing."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from warmstart.infra.errors import (
    HFFolderError,
    IntegrityError,
    ManifestError,
    RestoreError,
    SafetensorsHeaderError,
    SnapshotNotFoundError,
    VersionExistsError,
)
from warmstart.snapshot import hf, manifest as manifest_mod
from warmstart.snapshot.cache import SnapshotCache
from warmstart.snapshot.hf import (
    INDEX_FILE,
    ShardIndexError,
    ShardTensorsError,
    check_shard_tensors,
    parse_shard_index,
    publish_hf_folder,
)
from warmstart.snapshot.manifest import (
    SHARDED_FORMAT_VERSION,
    TensorEntry,
    WeightsFile,
    WeightsInfo,
    parse_manifest,
    shards_digest,
)
from warmstart.snapshot.publish import publish_file, sha256_file
from warmstart.snapshot.restore import module_nbytes, restore_model
from warmstart.snapshot.stores import LocalStore
from tests.unit.snapshot.test_manifest import make_manifest

SHARD_1 = "model-00001-of-00002.safetensors"
SHARD_2 = "model-00002-of-00002.safetensors"
SHA_C, SHA_D = "c" * 64, "d" * 64


def index(weight_map: Any, **extra: Any) -> bytes:
    return json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map, **extra}).encode()


# --- the index, with plain values ------------------------------------------------------------


def test_a_valid_index_gives_its_weight_map() -> None:
    assert parse_shard_index(index({"a": SHARD_1, "b": SHARD_2, "c": SHARD_1})) == {
        "a": SHARD_1, "b": SHARD_2, "c": SHARD_1,
    }  # fmt: skip
    assert parse_shard_index(json.dumps({"weight_map": {"a": SHARD_1}})) == {"a": SHARD_1}  # no metadata


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "'weight_map' object"),
        (json.dumps({"weight_map": [SHARD_1]}).encode(), "'weight_map' object"),
        (index({}), "maps no tensors"),
        (index({"a": SHARD_1}, metadata=[1]), "'metadata' must be an object"),
        (index({"a": "../escape.safetensors"}), "not a plain shard file name"),
        (index({"a": "sub/model-00001.safetensors"}), "not a plain shard file name"),
        (index({"a": "model-00001.bin"}), "not a plain shard file name"),
        (index({"a": ".hidden.safetensors"}), "not a plain shard file name"),
        (index({"a": "golden.safetensors"}), "reserved"),
        (index({"a": ["not", "a", "name"]}), "must be a file name string, got list"),
        (index({"a": {"x": 1}}), "must be a file name string, got dict"),
        (index({"": SHARD_1}), "names are 1-1024 characters"),
        (index({"x" * 2000: SHARD_1}), "names are 1-1024 characters"),
        (b"[" * 100 + b"]" * 100, "levels deep"),
    ],
)
def test_a_bad_index_is_a_typed_error_naming_it_and_the_fix(raw: bytes, match: str) -> None:
    with pytest.raises(ShardIndexError, match=match) as caught:
        parse_shard_index(raw, "/models/x/model.safetensors.index.json")
    assert isinstance(caught.value, HFFolderError)
    message = str(caught.value)
    assert "/models/x/model.safetensors.index.json" in message and len(message) < 600
    assert "save_pretrained" in message
    assert "republish" not in message  # a local file: the fix is to the folder


def test_an_oversized_index_is_refused_before_it_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf, "MAX_INDEX_BYTES", 100)

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoded an index over the limit")

    monkeypatch.setattr(hf, "load_json", never)
    with pytest.raises(ShardIndexError, match="over the 100-byte limit for an index"):
        parse_shard_index(b" " * 101)


def test_too_many_tensors_are_refused_by_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf, "MAX_TENSORS", 2)
    with pytest.raises(ShardIndexError, match="maps 3 tensors, over the limit of 2"):
        parse_shard_index(index({"a": SHARD_1, "b": SHARD_1, "c": SHARD_2}))


def test_too_many_shards_are_refused_with_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf, "MAX_SHARDS", 2)
    weight_map = {f"t{i}": f"model-{i:05d}-of-00003.safetensors" for i in range(1, 4)}
    with pytest.raises(ShardIndexError, match="more than 2 shard files.*MAX_SHARDS.*max_shard_size"):
        parse_shard_index(index(weight_map))
    assert hf.MAX_SHARDS == 2 and manifest_mod.MAX_SHARDS == 1024  # the real limit


def test_shards_agreeing_with_the_index_pass() -> None:
    check_shard_tensors({"a": SHARD_1, "b": SHARD_2}, {SHARD_1: ["a"], SHARD_2: ["b"]})


@pytest.mark.parametrize(
    ("weight_map", "found", "match"),
    [
        # the same key in two shards
        ({"a": SHARD_1, "b": SHARD_2}, {SHARD_1: ["a", "b"], SHARD_2: ["b"]},
         f"overlap: tensor 'b' in {SHARD_1} and {SHARD_2}"),
        # the index maps a key to shard 1, found only in shard 2
        ({"a": SHARD_1, "b": SHARD_1}, {SHARD_1: ["a"], SHARD_2: ["b"]},
         f"maps tensors to other shards than those holding them: 'b' \\(index: {SHARD_1}, found in {SHARD_2}\\)"),
        # a key in a shard that the index does not list
        ({"a": SHARD_1}, {SHARD_1: ["a", "extra"]}, f"does not list tensors that the shards hold: 'extra' in {SHARD_1}"),
        # an index key in no shard
        ({"a": SHARD_1, "gone": SHARD_2}, {SHARD_1: ["a"], SHARD_2: []},
         f"lists tensors that no shard holds: 'gone' \\(index: {SHARD_2}\\)"),
    ],
)  # fmt: skip
def test_shards_disagreeing_with_the_index_are_typed_errors(
    weight_map: dict[str, str], found: dict[str, list[str]], match: str
) -> None:
    with pytest.raises(ShardTensorsError, match=match) as caught:
        check_shard_tensors(weight_map, found, "the/index.json")
    assert isinstance(caught.value, HFFolderError)
    assert "save_pretrained" in str(caught.value)


def test_a_mismatch_message_names_a_few_tensors_and_counts_the_rest() -> None:
    weight_map = {f"t{i}": SHARD_1 for i in range(20)}
    with pytest.raises(ShardTensorsError, match=r"'t4' \(index: .*\) \(and 15 more\)") as caught:
        check_shard_tensors(weight_map, {SHARD_1: []})
    assert "'t5'" not in str(caught.value)


# --- the manifest: format version 2 ------------------------------------------------------------


def sharded_manifest() -> manifest_mod.Manifest:
    one = WeightsFile(SHARD_1, 8 + 100 + 24, SHA_C, 100, (TensorEntry("w", "F32", (2, 3), (0, 24)),))
    two = WeightsFile(SHARD_2, 8 + 50 + 8, SHA_D, 50, (TensorEntry("b", "F64", (1,), (0, 8)),))
    return dataclasses.replace(make_manifest(), weights=WeightsInfo.from_shards([one, two]))


def test_a_sharded_manifest_is_format_2_and_round_trips() -> None:
    m = sharded_manifest()
    raw = json.loads(m.to_json())
    assert raw["format_version"] == SHARDED_FORMAT_VERSION == 2
    assert set(raw["weights"]) == {"size_bytes", "sha256", "shards"}
    assert [s["file"] for s in raw["weights"]["shards"]] == [SHARD_1, SHARD_2]
    assert raw["weights"]["shards"][1] == {
        "file": SHARD_2, "size_bytes": 66, "sha256": SHA_D, "header_bytes": 50,
        "tensors": [{"name": "b", "dtype": "F64", "shape": [1], "offsets": [0, 8]}],
    }  # fmt: skip
    assert raw["weights"]["size_bytes"] == 132 + 66
    listing = f"{SHA_C}  {SHARD_1}\n{SHA_D}  {SHARD_2}\n"
    assert raw["weights"]["sha256"] == hashlib.sha256(listing.encode()).hexdigest() == shards_digest(m.weights.shards)
    parsed = parse_manifest(m.to_json())
    assert parsed.format_version == m.format_version == 2 and parsed == m
    assert [t.name for t in parsed.weights.tensors] == ["w", "b"]  # the union
    assert parsed.weights.files == m.weights.shards
    assert parse_manifest(parsed.to_json()) == parsed


def test_single_file_manifests_keep_format_1_and_their_files() -> None:
    m = make_manifest()
    assert json.loads(m.to_json())["format_version"] == 1 and "shards" not in json.loads(m.to_json())["weights"]
    (only,) = m.weights.files
    assert (only.file, only.sha256, only.tensors) == ("model.safetensors", m.weights.sha256, m.weights.tensors)


def _sharded_raw() -> dict[str, Any]:
    return json.loads(sharded_manifest().to_json())


def _change(edit: Any) -> dict[str, Any]:
    raw = copy.deepcopy(_sharded_raw())
    edit(raw)
    return raw


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r: r["weights"].update(size_bytes=1), "is 1 but the shards hold 198 bytes"),
        (lambda r: r["weights"].update(sha256="e" * 64), "not the digest of the shard list"),
        (lambda r: r["weights"]["shards"][1]["tensors"][0].update(name="w"), "'w' is in both"),
        (lambda r: r["weights"]["shards"][1].update(file=SHARD_1), "names a file twice"),
        (lambda r: r["weights"]["shards"][1].update(file="../x.safetensors"), r"shards\[1\].file' is '../x"),
        (lambda r: r["weights"]["shards"][0].update(file="model.safetensors"), "reserved"),
        (lambda r: r["weights"].update(shards=[]), "at least one shard"),
        (lambda r: r["weights"].update(tensors=[]), "unknown keys"),
        (lambda r: r["weights"]["shards"][0].pop("sha256"), r"shards\[0\].sha256' is missing"),
        (lambda r: r["weights"]["shards"][0]["tensors"][0].update(offsets=[100, 124]), "only 24 bytes long"),
        (lambda r: r["weights"]["shards"].__setitem__(0, "x"), r"shards\[0\]' must be an object"),
        (lambda r: r.update(skip_keys={"rule": "non_persistent_buffers", "keys": ["nope"]}), "not tensors"),
        (lambda r: r.update(format_version=1), "weights.shards' needs format_version 2"),
    ],
)  # fmt: skip
def test_a_malformed_sharded_manifest_is_refused(edit: Any, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        parse_manifest(_change(edit))


def test_skip_keys_may_name_a_tensor_of_any_shard() -> None:
    raw = _change(lambda r: r.update(skip_keys={"rule": "non_persistent_buffers", "keys": ["b"]}))
    assert parse_manifest(raw).skip_keys == ("b",)


def test_format_1_with_shards_and_format_2_without_are_refused() -> None:
    raw = json.loads(make_manifest().to_json())
    raw["weights"]["shards"] = _sharded_raw()["weights"]["shards"]
    with pytest.raises(ManifestError, match="weights.shards' needs format_version 2"):
        parse_manifest(raw)
    raw = json.loads(make_manifest().to_json())
    raw["format_version"] = 2
    with pytest.raises(ManifestError, match="unknown keys"):
        parse_manifest(raw)


def test_shard_and_tensor_counts_are_bounded_before_entries_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_mod, "MAX_SHARDS", 1)
    with pytest.raises(ManifestError, match="shards' has 2 entries, over the limit of 1"):
        parse_manifest(_sharded_raw())
    monkeypatch.setattr(manifest_mod, "MAX_SHARDS", 1024)
    monkeypatch.setattr(manifest_mod, "MAX_TENSORS", 1)
    with pytest.raises(ManifestError, match="over 1 tensors in all"):
        parse_manifest(_sharded_raw())


# --- a sharded folder: publish, fetch, restore ---------------------------------------------------

transformers = pytest.importorskip("transformers")
from tests.unit.snapshot.test_hf import make_folder  # noqa: E402


def shard_folder(folder: Path, parts: int = 2) -> dict[str, str]:
    """Split the folder's model.safetensors into ``parts`` shards plus an index, the way
    save_pretrained(max_shard_size=...) lays them out; position_ids go to the last shard."""
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(k for k in state if k != "embeddings.position_ids")
    weight_map = {}
    for i in range(parts):
        file = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        keys = names[i::parts] + (["embeddings.position_ids"] if i == parts - 1 and "embeddings.position_ids" in state else [])
        save_file({k: state[k] for k in keys}, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, file))
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return weight_map


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_a_sharded_folder_is_published_unchanged_and_restores_from_several_mappings(
    store: LocalStore, tmp_path: Path
) -> None:
    reference_folder = make_folder(tmp_path / "whole")
    folder = make_folder(tmp_path / "hf")
    shard_folder(folder, parts=3)
    m = publish_hf_folder(store, "bert", "v1", folder, outputs=["last_hidden_state"], show_progress=False)
    files = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert m.format_version == 2 and [s.file for s in m.weights.shards] == files
    for shard in m.weights.shards:  # each its own object, byte for byte
        assert shard.sha256 == sha256_file(folder / shard.file)
        assert store.get_bytes(f"snapshots/bert/v1/{shard.file}") == (folder / shard.file).read_bytes()
    assert not store.exists("snapshots/bert/v1/model.safetensors")
    assert m.weights.size_bytes == sum((folder / f).stat().st_size for f in files)
    assert m.skip_keys == ("embeddings.position_ids",)  # found in the last shard

    cache = SnapshotCache(tmp_path / "cache", 10**8)
    local = cache.fetch(store, m)
    assert local.weights_path == local.directory  # what the pool hands to restore_model
    assert [p.name for p in local.weights_paths] == files
    assert local.downloaded_bytes == m.weights.size_bytes + m.golden.size_bytes
    module = restore_model(local.weights_path, m)
    assert module_nbytes(module) >= m.weights.size_bytes  # each mapping counted once
    ids = torch.tensor([[5, 17, 96, 3], [2, 8, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    reference = transformers.BertModel.from_pretrained(str(reference_folder)).eval()
    with torch.inference_mode():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(module(input_ids=ids, attention_mask=mask)["last_hidden_state"], expected)
        again = restore_model(list(local.weights_paths), m)  # the files, in order, work too
        assert torch.equal(again(input_ids=ids, attention_mask=mask)["last_hidden_state"], expected)

    assert cache.fetch(store, m).downloaded_bytes == 0
    assert cache.verify("bert", "v1")
    shard = local.weights_paths[1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    assert not cache.verify("bert", "v1") and not cache.contains("bert", "v1")

    # the same shards again: a no-op; the single file under that version is other weights
    assert publish_hf_folder(store, "bert", "v1", folder, outputs=["last_hidden_state"], show_progress=False) == m
    with pytest.raises(VersionExistsError, match="already published with other weights"):
        publish_hf_folder(store, "bert", "v1", reference_folder, outputs=["last_hidden_state"], show_progress=False)


def test_a_sharded_snapshot_restores_from_its_folder_not_from_one_shard(store: LocalStore, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "hf")
    shard_folder(folder)
    m = publish_hf_folder(store, "bert", "v1", folder, outputs=["last_hidden_state"], show_progress=False)
    with pytest.raises(RestoreError, match="sharded into 2 files; restore it from the folder"):
        restore_model(folder / SHARD_1, m)
    with pytest.raises(RestoreError, match="has 2 weight files"):
        restore_model([folder / SHARD_1], m)
    with pytest.raises(SafetensorsHeaderError, match=SHARD_1):  # in the wrong order
        restore_model([folder / SHARD_2, folder / SHARD_1], m)


def test_the_cache_refuses_a_missing_or_truncated_shard_and_keeps_nothing(store: LocalStore, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "hf")
    shard_folder(folder)
    m = publish_hf_folder(store, "bert", "v1", folder, outputs=["last_hidden_state"], show_progress=False)
    cache = SnapshotCache(tmp_path / "cache", 10**8)
    key = f"snapshots/bert/v1/{SHARD_2}"
    good = store.get_bytes(key)
    store.put_bytes(key, good[:-4])
    with pytest.raises(IntegrityError, match=f"{SHARD_2} of bert/v1 is {len(good) - 4} bytes"):
        cache.fetch(store, m)
    store.delete(key)
    with pytest.raises(SnapshotNotFoundError, match=f"{SHARD_2} of bert/v1 is missing"):
        cache.fetch(store, m)
    assert not cache.contains("bert", "v1") and cache.usage_bytes() == 0


def _break(folder: Path, how: str) -> None:
    index_path = folder / INDEX_FILE
    weight_map = json.loads(index_path.read_text())["weight_map"]
    if how == "missing shard":
        (folder / SHARD_2).unlink()
    elif how == "overlap":  # a tensor of shard 2 saved in shard 1 as well
        one, two = load_file(str(folder / SHARD_1)), load_file(str(folder / SHARD_2))
        key = next(iter(two))
        save_file({**one, key: two[key]}, str(folder / SHARD_1))
    elif how == "elsewhere":  # the index maps a key of shard 2 to shard 1
        key = next(k for k, v in weight_map.items() if v == SHARD_2)
        index_path.write_text(json.dumps({"weight_map": {**weight_map, key: SHARD_1}}))
    elif how == "unlisted":
        key = next(iter(weight_map))
        index_path.write_text(json.dumps({"weight_map": {k: v for k, v in weight_map.items() if k != key}}))
    elif how == "nowhere":
        index_path.write_text(json.dumps({"weight_map": {**weight_map, "pooler.extra": SHARD_2}}))
    elif how == "not json":
        index_path.write_text('{"weight_map": {')
    elif how == "escaping shard":
        index_path.write_text(json.dumps({"weight_map": dict.fromkeys(weight_map, "../hf/" + SHARD_1)}))
    elif how == "bad shard header":
        (folder / SHARD_2).write_bytes(b"\xff" * 16)


@pytest.mark.parametrize(
    ("how", "error", "match"),
    [
        ("missing shard", ShardIndexError, f"names 1 shard files that are not in .*{SHARD_2}.*copy every shard"),
        ("overlap", ShardTensorsError, f"overlap: tensor .* in {SHARD_1} and {SHARD_2}"),
        ("elsewhere", ShardTensorsError, f"index: {SHARD_1}, found in {SHARD_2}"),
        ("unlisted", ShardTensorsError, "does not list tensors that the shards hold"),
        ("nowhere", ShardTensorsError, "lists tensors that no shard holds: 'pooler.extra'"),
        ("not json", ShardIndexError, "is not valid JSON"),
        ("escaping shard", ShardIndexError, "not a plain shard file name"),
        ("bad shard header", SafetensorsHeaderError, f"shard .*{SHARD_2}: header claims"),
    ],
)
def test_a_bad_sharded_folder_is_a_typed_error_and_publishes_nothing(
    store: LocalStore, tmp_path: Path, how: str, error: type[Exception], match: str
) -> None:
    folder = make_folder(tmp_path / "hf")
    shard_folder(folder)
    _break(folder, how)
    with pytest.raises(error, match=match) as caught:
        publish_hf_folder(store, "bert", "v1", folder, show_progress=False)
    if error is not SafetensorsHeaderError:
        assert isinstance(caught.value, HFFolderError) and INDEX_FILE in str(caught.value)
    assert not store.list_keys("snapshots/")


def test_an_oversized_index_is_refused_before_it_is_read(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_folder(tmp_path / "hf")
    shard_folder(folder)
    monkeypatch.setattr(hf, "MAX_INDEX_BYTES", 64)
    with pytest.raises(ShardIndexError, match=f"{INDEX_FILE} is .* bytes, over the 64-byte limit"):
        publish_hf_folder(store, "bert", "v1", folder, show_progress=False)
    assert not store.list_keys("snapshots/")


def test_publish_file_takes_shards_and_refuses_overlapping_ones(store: LocalStore, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "hf", with_position_ids=False)
    shard_folder(folder)
    arch = {"factory": hf.FACTORY, "kwargs": {"config": json.loads((folder / "config.json").read_text())}}
    inputs = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "value_range": [0, 97]}]
    one = load_file(str(folder / SHARD_1))
    save_file(one, str(tmp_path / "copy.safetensors"))
    with pytest.raises(ManifestError, match=f"is in both {SHARD_1} and copy.safetensors"):
        publish_file(store, "bert", "v1", [folder / SHARD_1, tmp_path / "copy.safetensors"], arch, inputs,
                     outputs=["last_hidden_state"], show_progress=False)  # fmt: skip
    with pytest.raises(SnapshotNotFoundError, match="does not exist"):
        publish_file(store, "bert", "v1", [folder / SHARD_1, tmp_path / "nope.safetensors"], arch, inputs,
                     outputs=["last_hidden_state"], show_progress=False)  # fmt: skip
    assert not store.list_keys("snapshots/")
    m = publish_file(store, "bert", "v1", [folder / SHARD_1, folder / SHARD_2], arch, inputs,
                     outputs=["last_hidden_state"], show_progress=False)  # fmt: skip
    assert m.format_version == 2 and not m.skip_keys


def test_cli_publishes_a_sharded_folder_and_names_a_missing_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from warmstart.cli import main

    folder = make_folder(tmp_path / "hf")
    shard_folder(folder)
    monkeypatch.setenv("WARMSTART_STORE_URL", f"file://{tmp_path / 'store'}")
    ok = CliRunner().invoke(main, ["publish", "bert", "--hf-dir", str(folder), "--outputs", "last_hidden_state", "--json"])
    assert ok.exit_code == 0, ok.output
    published = parse_manifest(json.dumps(json.loads(ok.output)[0]))
    assert [s.file for s in published.weights.shards] == [SHARD_1, SHARD_2]
    (folder / SHARD_2).unlink()
    bad = CliRunner().invoke(main, ["publish", "other", "--hf-dir", str(folder)])
    assert bad.exit_code == 2 and "ShardIndexError" in bad.output and SHARD_2 in bad.output
