"""The file store serves regular files inside its root, and nothing else.

Whoever can write into the store's directory (a shared filesystem) must not be able to make a
worker read, write or delete outside it, nor hang or exhaust it with a FIFO or a device.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from warmstart.infra.errors import (
    ObjectTooLargeError,
    SnapshotNotFoundError,
    StoreError,
    UnsafeObjectError,
)
from warmstart.snapshot.stores import LocalStore

SECRET = b"top secret bytes " * 727  # 12359 bytes: a size that must not show up in messages


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    directory = tmp_path / "outside"
    (directory / "v1").mkdir(parents=True)
    (directory / "secret.bin").write_bytes(SECRET)
    (directory / "v1" / "manifest.json").write_bytes(SECRET)
    return directory


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("snapshots/real/v1/manifest.json", b"{}")
    return store


def assert_no_leak(error: BaseException, outside: Path) -> None:
    text = str(error)
    assert str(len(SECRET)) not in text and "secret" not in text and str(outside) not in text


def test_symlinked_file_is_refused(store: LocalStore, outside: Path) -> None:
    link = store.root / "snapshots" / "real" / "v1" / "model.safetensors"
    link.symlink_to(outside / "secret.bin")
    key = "snapshots/real/v1/model.safetensors"
    for call in (
        lambda: store.get_bytes(key), lambda: store.get_bytes(key, max_bytes=10**9),
        lambda: store.get_range(key, 0, 10), lambda: store.size(key), lambda: store.exists(key),
    ):  # fmt: skip
        with pytest.raises(UnsafeObjectError, match="symbolic link") as info:
            call()
        assert_no_leak(info.value, outside)
    assert store.list_keys("snapshots/") == ["snapshots/real/v1/manifest.json"]


def test_symlinked_directory_is_refused(store: LocalStore, outside: Path) -> None:
    (store.root / "snapshots" / "linked").symlink_to(outside)
    key = "snapshots/linked/v1/manifest.json"
    for call in (lambda: store.get_bytes(key), lambda: store.get_range(key, 0, 5), lambda: store.size(key)):
        with pytest.raises(UnsafeObjectError) as info:
            call()
        assert_no_leak(info.value, outside)
    assert store.list_keys("snapshots/") == ["snapshots/real/v1/manifest.json"]
    assert store.list_keys("snapshots/linked/") == []
    # Writes and deletes never go through the link either.
    with pytest.raises(UnsafeObjectError):
        store.put_bytes("snapshots/linked/v1/new.json", b"planted")
    with pytest.raises(UnsafeObjectError):
        store.delete(key)
    assert not (outside / "v1" / "new.json").exists()
    assert (outside / "v1" / "manifest.json").read_bytes() == SECRET


def test_link_to_dev_zero_is_refused(store: LocalStore) -> None:
    """A link to /dev/zero used to be read until memory ran out."""
    (store.root / "snapshots" / "real" / "v1" / "golden.safetensors").symlink_to("/dev/zero")
    key = "snapshots/real/v1/golden.safetensors"
    with pytest.raises(UnsafeObjectError):
        store.get_range(key, 0, 10)
    with pytest.raises(UnsafeObjectError):
        store.get_bytes(key, max_bytes=10)
    with pytest.raises(UnsafeObjectError):
        store.size(key)


def _without_hanging(call: Callable[[], Any], fifo: Path) -> BaseException | None:
    """Run ``call`` on a thread; if it blocks opening the FIFO, open the other end to free it
    and report the hang as a failure instead of hanging the test run."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # unblocks the reader
        os.close(fd)
        thread.join(30)
        pytest.fail("reading a FIFO in the store blocked")
    return outcome[0]


def test_fifo_is_refused_without_blocking(store: LocalStore) -> None:
    fifo = store.root / "snapshots" / "real" / "v1" / "model.safetensors"
    os.mkfifo(fifo)
    key = "snapshots/real/v1/model.safetensors"
    for call in (lambda: store.get_bytes(key), lambda: store.get_range(key, 0, 10)):
        error = _without_hanging(call, fifo)
        assert isinstance(error, UnsafeObjectError), error
        assert "regular file" in str(error)
    with pytest.raises(UnsafeObjectError):
        store.size(key)
    assert store.list_keys("snapshots/") == ["snapshots/real/v1/manifest.json"]


def test_directories_are_not_objects(store: LocalStore) -> None:
    with pytest.raises(SnapshotNotFoundError):
        store.get_bytes("snapshots/real/v1")
    assert store.size("snapshots/real/v1") is None
    with pytest.raises(SnapshotNotFoundError):
        store.get_bytes("snapshots/real/v1/manifest.json/below")  # a file used as a directory
    assert store.size("snapshots/real/v1/manifest.json/below") is None


def test_bounded_read_checks_the_size_before_reading(store: LocalStore) -> None:
    store.put_bytes("k/big", b"x" * 1000)
    with pytest.raises(ObjectTooLargeError, match="1000 bytes"):
        store.get_bytes("k/big", max_bytes=999)


def test_root_may_itself_be_a_symlink(tmp_path: Path) -> None:
    """The root is configuration, not data from the store: a link there is the operator's choice."""
    (tmp_path / "real-root").mkdir()
    (tmp_path / "root-link").symlink_to(tmp_path / "real-root")
    store = LocalStore(tmp_path / "root-link")
    store.put_bytes("a/b", b"1")
    assert store.get_bytes("a/b") == b"1" and store.list_keys("") == ["a/b"]
    assert (tmp_path / "real-root" / "a" / "b").read_bytes() == b"1"
    store.delete("a/b")
    assert store.list_keys("") == [] and (tmp_path / "real-root").is_dir()


def test_put_replaces_a_planted_symlink_instead_of_writing_through_it(store: LocalStore, outside: Path) -> None:
    link = store.root / "snapshots" / "real" / "v1" / "alias.json"
    link.symlink_to(outside / "secret.bin")
    store.put_bytes("snapshots/real/v1/alias.json", b"mine")
    assert (outside / "secret.bin").read_bytes() == SECRET
    assert not link.is_symlink() and store.get_bytes("snapshots/real/v1/alias.json") == b"mine"


def test_delete_removes_a_link_not_its_target(store: LocalStore, outside: Path) -> None:
    link = store.root / "snapshots" / "real" / "v1" / "x"
    link.symlink_to(outside / "secret.bin")
    store.delete("snapshots/real/v1/x")
    assert not link.is_symlink() and (outside / "secret.bin").read_bytes() == SECRET


def test_cache_fetch_through_a_link_leaks_nothing(store: LocalStore, outside: Path, tmp_path: Path) -> None:
    """The cache's size and sha256 messages used to describe whatever the link pointed at."""
    from tests.unit.snapshot.test_cache import publish_tiny
    from warmstart.snapshot.cache import SnapshotCache

    manifest = publish_tiny(store, "tiny")
    weights = store.root / "snapshots" / "tiny" / "v1" / "model.safetensors"
    weights.unlink()
    weights.symlink_to(outside / "secret.bin")
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=10**9)
    with pytest.raises(StoreError) as info:
        cache.fetch(store, manifest)
    assert isinstance(info.value, UnsafeObjectError)
    assert_no_leak(info.value, outside)
    assert not cache.contains("tiny", "v1")
