"""The local snapshot cache: verified downloads, LRU within a budget, cross-process fetches.

Top-level imports stay free of torch: the cross-process test spawns fresh interpreters that
import this module.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import multiprocessing
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from warmstart.infra.errors import (
    CacheFullError,
    IntegrityError,
    SafetensorsHeaderError,
    SnapshotNotFoundError,
    StoreError,
)
from warmstart.snapshot.cache import LocalSnapshot, SnapshotCache, fetch_version
from warmstart.snapshot.manifest import Manifest, parse_manifest
from warmstart.snapshot.stores import LocalStore

KEY = "snapshots/{model}/v1/{file}"


def publish_tiny(store: LocalStore, model: str, hidden: int = 8, seed: int = 0) -> Manifest:
    import torch

    from warmstart.snapshot.publish import publish_module
    from tests.unit.snapshot import tiny_models as tiny

    torch.manual_seed(seed)
    return publish_module(
        store, model, "v1", tiny.build_tiny_mlp(hidden=hidden), {"factory": tiny.MLP, "kwargs": {"hidden": hidden}},
        tiny.MLP_INPUTS, show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def manifest(store: LocalStore) -> Manifest:
    return publish_tiny(store, "tiny")


def entry_size(m: Manifest) -> int:
    return m.weights.size_bytes + m.golden.size_bytes + len(m.to_json())


def cache_files(cache: SnapshotCache) -> list[str]:
    if not cache.root.exists():
        return []
    return sorted(
        p.relative_to(cache.root).as_posix()
        for p in cache.root.rglob("*")
        if p.is_file() and ".locks" not in p.parts
    )


def test_fetch_then_hit(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9, concurrency=4, part_bytes=64)
    local = cache.fetch(store, manifest)
    assert isinstance(local, LocalSnapshot)
    assert local.directory == tmp_path / "cache" / "tiny" / "v1"
    assert local.weights_path.read_bytes() == store.get_bytes(KEY.format(model="tiny", file="model.safetensors"))
    assert local.golden_path.read_bytes() == store.get_bytes(KEY.format(model="tiny", file="golden.safetensors"))
    assert parse_manifest(local.manifest_path.read_bytes()) == manifest
    assert local.downloaded_bytes == manifest.weights.size_bytes + manifest.golden.size_bytes
    assert cache_files(cache) == [
        "tiny/v1/.used", "tiny/v1/golden.safetensors", "tiny/v1/manifest.json", "tiny/v1/model.safetensors",
    ]  # fmt: skip
    assert cache.contains("tiny", "v1") and not cache.contains("tiny", "v2")
    assert cache.usage_bytes() == entry_size(manifest)
    [entry] = cache.entries()
    assert (entry.model, entry.version, entry.size_bytes) == ("tiny", "v1", entry_size(manifest))
    again = cache.fetch(store, manifest)
    assert again.downloaded_bytes == 0 and again.weights_path == local.weights_path
    assert cache.get("tiny", "v1") is not None and cache.get("tiny", "v9") is None


def test_fetch_version_resolves_aliases(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    assert fetch_version(store, cache, "tiny").manifest == manifest
    with pytest.raises(SnapshotNotFoundError, match="'v7'"):
        fetch_version(store, cache, "tiny", "v7")


def test_from_settings(tmp_path: Path) -> None:
    from warmstart.infra.settings import load_settings

    cache = SnapshotCache.from_settings(
        load_settings(cache_dir=tmp_path / "c", cache_budget_bytes=1234, fetch_concurrency=3)
    )
    assert (cache.root, cache.budget_bytes, cache.concurrency) == (tmp_path / "c", 1234, 3)


# --- bad bytes: a typed error, and no entry left behind ------------------------------------


def assert_no_entry(cache: SnapshotCache) -> None:
    assert not cache.contains("tiny", "v1")
    assert cache_files(cache) == []
    assert cache.usage_bytes() == 0


def test_corrupt_bytes(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    key = KEY.format(model="tiny", file="model.safetensors")
    data = bytearray(store.get_bytes(key))
    data[-1] ^= 0xFF  # same size, one flipped byte
    store.put_bytes(key, bytes(data))
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9, part_bytes=32)
    with pytest.raises(IntegrityError, match="sha256"):
        cache.fetch(store, manifest)
    assert_no_entry(cache)


def test_corrupt_golden(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    key = KEY.format(model="tiny", file="golden.safetensors")
    data = bytearray(store.get_bytes(key))
    data[-1] ^= 0xFF
    store.put_bytes(key, bytes(data))
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    with pytest.raises(IntegrityError, match="golden.safetensors"):
        cache.fetch(store, manifest)
    assert_no_entry(cache)  # the weights that did verify are gone too


def test_truncated_remote_file(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    key = KEY.format(model="tiny", file="model.safetensors")
    store.put_bytes(key, store.get_bytes(key)[:-7])
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    with pytest.raises(IntegrityError, match="truncated"):
        cache.fetch(store, manifest)
    assert_no_entry(cache)


class ShortReadStore(LocalStore):
    """Reports the full size but serves a short last range (a connection cut mid-body)."""

    def get_range(self, key: str, start: int, end: int) -> bytes:
        data = super().get_range(key, start, end)
        return data[:-1] if end >= (self.size(key) or 0) else data


def test_truncated_download(manifest: Manifest, tmp_path: Path) -> None:
    store = ShortReadStore(tmp_path / "store")
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9, part_bytes=100)
    with pytest.raises(IntegrityError, match="truncated"):
        cache.fetch(store, manifest)
    assert_no_entry(cache)


class FailingStore(LocalStore):
    def get_range(self, key: str, start: int, end: int) -> bytes:
        if start > 0:
            raise StoreError("simulated network failure")
        return super().get_range(key, start, end)


def test_store_failure_midway(manifest: Manifest, tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9, concurrency=3, part_bytes=50)
    with pytest.raises(StoreError, match="simulated"):
        cache.fetch(FailingStore(tmp_path / "store"), manifest)
    assert_no_entry(cache)


def test_missing_remote_file(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    store.delete(KEY.format(model="tiny", file="golden.safetensors"))
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    with pytest.raises(SnapshotNotFoundError, match="golden.safetensors of tiny/v1 is missing"):
        cache.fetch(store, manifest)
    assert_no_entry(cache)


def test_manifest_index_disagreeing_with_header(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    """The bytes match their sha256, but the manifest's tensor index says another dtype."""
    tensors = list(manifest.weights.tensors)
    tensors[0] = dataclasses.replace(tensors[0], dtype="I32")  # same size as F32
    lying = dataclasses.replace(manifest, weights=dataclasses.replace(manifest.weights, tensors=tuple(tensors)))
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    with pytest.raises(SafetensorsHeaderError, match="in the manifest"):
        cache.fetch(store, lying)
    assert_no_entry(cache)


def test_lying_header_with_matching_sha(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    """A file whose header has overlapping offsets, with a manifest that vouches for its sha."""
    import hashlib

    key = KEY.format(model="tiny", file="model.safetensors")
    blob = store.get_bytes(key)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    first = min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    second = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])[1]
    header[second]["data_offsets"] = [0, header[second]["data_offsets"][1] - header[second]["data_offsets"][0]]
    assert first != second
    body = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(body) == n
    evil = blob[:8] + body + blob[8 + n :]
    store.put_bytes(key, evil)
    vouched = dataclasses.replace(
        manifest, weights=dataclasses.replace(manifest.weights, sha256=hashlib.sha256(evil).hexdigest())
    )
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    with pytest.raises(SafetensorsHeaderError, match="overlaps|gap"):
        cache.fetch(store, vouched)
    assert_no_entry(cache)


def test_huge_header_length(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    import hashlib

    key = KEY.format(model="tiny", file="model.safetensors")
    blob = store.get_bytes(key)
    evil = struct.pack("<Q", 2**62) + blob[8:]
    store.put_bytes(key, evil)
    vouched = dataclasses.replace(
        manifest, weights=dataclasses.replace(manifest.weights, sha256=hashlib.sha256(evil).hexdigest())
    )
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    with pytest.raises(SafetensorsHeaderError, match="header claims"):
        cache.fetch(store, vouched)
    assert_no_entry(cache)


# --- re-verification of cached entries -------------------------------------------------------


def test_damaged_cached_entry_is_fetched_again(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    local = cache.fetch(store, manifest)
    good = local.weights_path.read_bytes()
    local.weights_path.write_bytes(good[:-3])  # truncated on disk
    again = cache.fetch(store, manifest)
    assert again.downloaded_bytes > 0 and again.weights_path.read_bytes() == good
    (local.directory / "manifest.json").write_bytes(b"{garbage")
    assert cache.fetch(store, manifest).downloaded_bytes > 0


def test_leftovers_of_a_crashed_download_are_cleaned(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    crashed = tmp_path / "cache" / "tiny" / "v1"
    crashed.mkdir(parents=True)
    (crashed / ".model.safetensors.part-999-deadbeef").write_bytes(b"x" * 100)
    (crashed / "model.safetensors").write_bytes(b"half")
    assert not cache.contains("tiny", "v1") and cache.entries() == []
    cache.fetch(store, manifest)
    assert ".model.safetensors.part-999-deadbeef" not in {p.name for p in crashed.iterdir()}
    assert cache.usage_bytes() == entry_size(manifest)


# --- budget and LRU ------------------------------------------------------------------------


@pytest.fixture
def three(store: LocalStore) -> list[Manifest]:
    return [publish_tiny(store, name, seed=i) for i, name in enumerate(["a", "b", "c"])]


def test_larger_than_budget_deletes_nothing(store: LocalStore, three: list[Manifest], tmp_path: Path) -> None:
    big = publish_tiny(store, "big", hidden=512)
    budget = entry_size(three[0]) * 3
    assert entry_size(big) > budget
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=budget)
    for m in three:
        cache.fetch(store, m)
    before = cache_files(cache)
    with pytest.raises(CacheFullError, match="WARMSTART_CACHE_BUDGET_BYTES") as info:
        cache.fetch(store, big)
    assert str(entry_size(big)) in str(info.value) and str(budget) in str(info.value)
    assert cache_files(cache) == before


def test_lru_eviction(store: LocalStore, three: list[Manifest], tmp_path: Path) -> None:
    a, b, c = three
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=entry_size(a) * 2 + 100)
    cache.fetch(store, a)
    time.sleep(0.01)
    cache.fetch(store, b)
    time.sleep(0.01)
    assert cache.fetch(store, a).downloaded_bytes == 0  # a is now the most recently used
    time.sleep(0.01)
    cache.fetch(store, c)
    assert [(e.model, e.version) for e in cache.entries()] == [("a", "v1"), ("c", "v1")]
    assert cache.usage_bytes() <= cache.budget_bytes


def test_eviction_skips_entries_being_fetched(store: LocalStore, three: list[Manifest], tmp_path: Path) -> None:
    a, b, c = three
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=entry_size(a) * 2 + 100)
    cache.fetch(store, a)
    time.sleep(0.01)
    cache.fetch(store, b)
    with cache._entry_lock("a", "v1"):  # as another process fetching a would hold it
        cache.fetch(store, c)
    assert {e.model for e in cache.entries()} == {"a", "c"}  # b went although a was older


def test_full_when_everything_is_in_use(store: LocalStore, three: list[Manifest], tmp_path: Path) -> None:
    a, b, _ = three
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=entry_size(a) + 100)
    cache.fetch(store, a)
    before = cache_files(cache)
    with cache._entry_lock("a", "v1"):
        with pytest.raises(CacheFullError, match="being fetched"):
            cache.fetch(store, b)
    assert cache_files(cache) == before


def test_evict_and_mapped_files_survive(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    local = cache.fetch(store, manifest)
    with open(local.weights_path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    expected = local.weights_path.read_bytes()
    assert cache.evict("tiny", "v1") is True
    assert not local.directory.exists() and not cache.contains("tiny", "v1")
    assert mapped[:] == expected  # Linux keeps the unlinked, mapped file alive
    mapped.close()
    assert cache.evict("tiny", "v1") is False
    assert cache.usage_bytes() == 0


# --- several processes fetch one snapshot: exactly one downloads -----------------------------


class SlowStore(LocalStore):
    """Each ranged GET takes a while, so that concurrent fetches really overlap."""

    def get_range(self, key: str, start: int, end: int) -> bytes:
        time.sleep(0.1)
        return super().get_range(key, start, end)


def _fetch_in_child(root: str, cache_root: str, manifest_json: bytes, barrier: Any, results: Any) -> None:
    cache = SnapshotCache(cache_root, budget_bytes=10**9, concurrency=2, part_bytes=256)
    manifest = parse_manifest(manifest_json)
    barrier.wait(timeout=60)
    local = cache.fetch(SlowStore(root), manifest)
    results.put((local.downloaded_bytes, str(local.weights_path), local.weights_path.stat().st_size))


def test_one_download_across_processes(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    args = (str(store.root), str(tmp_path / "cache"), manifest.to_json(), barrier, results)
    procs = [ctx.Process(target=_fetch_in_child, args=args) for _ in range(3)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=90) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    downloads = [o[0] for o in outcomes]
    assert sum(1 for d in downloads if d > 0) == 1, downloads
    assert len({o[1] for o in outcomes}) == 1
    assert {o[2] for o in outcomes} == {manifest.weights.size_bytes}
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    assert cache.usage_bytes() == entry_size(manifest)
    assert [p.name for p in cache.entry_dir("tiny", "v1").iterdir() if ".part-" in p.name] == []


@pytest.mark.parametrize(("model", "version"), [("../etc", "v1"), ("tiny", "v1/../../x"), ("a/b", "v1")])
def test_unsafe_names_never_reach_the_filesystem(
    store: LocalStore, manifest: Manifest, tmp_path: Path, model: str, version: str
) -> None:
    from warmstart.infra.errors import InvalidNameError

    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    with pytest.raises(InvalidNameError):
        cache.fetch(store, dataclasses.replace(manifest, model=model, version=version))
    with pytest.raises(InvalidNameError):
        cache.evict(model, version)
    assert not (tmp_path / "cache").exists() or cache_files(cache) == []


# --- re-verification: verify() and verify_next() ---------------------------------------------


def _flip_last_byte(path: Path) -> None:
    """Damage a cached file in place, keeping its size (what bit rot or a stray write does)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    # Written through a new file and a rename, as the cache itself would never do it: an
    # in-place write would also work, but would change a file some test may have mapped.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(bytes(data))
    tmp.replace(path)


def test_verify_a_good_entry(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    cache.fetch(store, manifest)
    assert cache.verify("tiny", "v1") is True
    assert cache.contains("tiny", "v1")
    assert cache.fetch(store, manifest).downloaded_bytes == 0


@pytest.mark.parametrize("name", ["model.safetensors", "golden.safetensors"])
def test_verify_evicts_an_entry_whose_bytes_changed(
    store: LocalStore, manifest: Manifest, tmp_path: Path, name: str
) -> None:
    """A cached file used to be trusted forever once fetched: same size, other bytes, served."""
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    local = cache.fetch(store, manifest)
    good = (local.directory / name).read_bytes()
    _flip_last_byte(local.directory / name)
    assert cache.fetch(store, manifest).downloaded_bytes == 0  # the cheap check cannot see it
    assert cache.verify("tiny", "v1") is False
    assert not cache.contains("tiny", "v1")
    again = cache.fetch(store, manifest)
    assert again.downloaded_bytes > 0 and (again.directory / name).read_bytes() == good
    assert cache.verify("tiny", "v1") is True


def test_verify_a_truncated_or_missing_entry(store: LocalStore, manifest: Manifest, tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    assert cache.verify("tiny", "v1") is False  # nothing cached: no good copy here
    local = cache.fetch(store, manifest)
    local.weights_path.write_bytes(local.weights_path.read_bytes()[:-3])
    assert cache.verify("tiny", "v1") is False
    assert not cache.contains("tiny", "v1") and cache.usage_bytes() == 0


def test_verify_refuses_unsafe_names(tmp_path: Path) -> None:
    from warmstart.infra.errors import InvalidNameError

    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    with pytest.raises(InvalidNameError):
        cache.verify("../etc", "v1")


def test_verify_does_not_block_fetches_of_other_entries(
    store: LocalStore, three: list[Manifest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one entry is being hashed, another can be fetched (and evicted to make room)."""
    import threading

    from warmstart.snapshot import cache as cache_module

    a, b, c = three
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=entry_size(a) * 2 + 100)
    cache.fetch(store, a)
    cache.fetch(store, b)
    hashing, release = threading.Event(), threading.Event()
    real_hash = cache_module._sha256_fd

    def slow_hash(fd: int, size: int) -> str:
        hashing.set()
        release.wait(60)
        return real_hash(fd, size)

    monkeypatch.setattr(cache_module, "_sha256_fd", slow_hash)
    results: list[bool] = []
    verifier = threading.Thread(target=lambda: results.append(cache.verify("a", "v1")), daemon=True)
    verifier.start()
    assert hashing.wait(60)
    fetched: list[int] = []
    fetcher = threading.Thread(target=lambda: fetched.append(cache.fetch(store, c).downloaded_bytes), daemon=True)
    fetcher.start()
    fetcher.join(60)
    finished_while_hashing = not fetcher.is_alive()
    release.set()
    verifier.join(60)
    fetcher.join(60)
    assert finished_while_hashing, "a fetch of another entry waited for the verification"
    assert fetched and fetched[0] > 0
    assert results == [False]  # a was evicted for c meanwhile: there is no copy to call good
    assert not cache.contains("a", "v1") and cache.contains("c", "v1")


def test_verify_keeps_an_entry_replaced_while_it_was_hashed(
    store: LocalStore, manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bad copy was evicted and fetched again meanwhile: the good new copy stays."""
    from warmstart.snapshot import cache as cache_module

    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    local = cache.fetch(store, manifest)
    _flip_last_byte(local.weights_path)
    real_hash = cache_module._sha256_fd
    replaced: list[bool] = []

    def hash_after_replacement(fd: int, size: int) -> str:
        if not replaced:
            replaced.append(True)
            cache.evict("tiny", "v1")
            cache.fetch(store, manifest)
        return real_hash(fd, size)

    monkeypatch.setattr(cache_module, "_sha256_fd", hash_after_replacement)
    assert cache.verify("tiny", "v1") is False  # the copy it hashed was bad
    monkeypatch.setattr(cache_module, "_sha256_fd", real_hash)
    assert cache.contains("tiny", "v1") and cache.verify("tiny", "v1") is True


def test_verify_next_takes_the_least_recently_verified_within_a_budget(
    store: LocalStore, three: list[Manifest], tmp_path: Path
) -> None:
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    for m in three:
        cache.fetch(store, m)
    size = cache.entries()[0].size_bytes
    assert all(e.size_bytes == size for e in cache.entries())
    first = cache.verify_next(max_bytes=2 * size)
    assert first == [("a", "v1", True), ("b", "v1", True)]
    assert cache.verify_next(max_bytes=2 * size) == [("c", "v1", True), ("a", "v1", True)]
    _flip_last_byte(cache.entry_dir("b", "v1") / "model.safetensors")
    assert cache.verify_next(max_bytes=size) == [("b", "v1", False)]
    assert [e.model for e in cache.entries()] == ["a", "c"]
    # A budget below one entry's size still verifies one entry per call: none is starved.
    assert cache.verify_next(max_bytes=1) == [("c", "v1", True)]
    assert cache.verify_next(max_bytes=0) == [("a", "v1", True)]
    empty = SnapshotCache(tmp_path / "empty", budget_bytes=10**9)
    assert empty.verify_next(max_bytes=10**9) == []


def test_verify_next_refuses_a_negative_budget(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SnapshotCache(tmp_path / "cache", budget_bytes=10**9).verify_next(max_bytes=-1)
