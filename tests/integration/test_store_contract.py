"""The one contract every snapshot store passes: the local directory and S3 (moto's server,
over HTTP), with the same tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from warmstart.infra.errors import (
    ObjectTooLargeError,
    SnapshotNotFoundError,
    StoreError,
    StoreUnreachableError,
)
from warmstart.infra.services import EmbeddedS3, free_port
from warmstart.snapshot.stores import LocalStore, SnapshotStore, open_store_url
from warmstart.snapshot.stores.s3 import S3Store

pytestmark = pytest.mark.integration

BUCKET = "warmstart-contract"


@pytest.fixture(scope="module")
def s3_bucket(s3_server: Any) -> str:
    S3Store(BUCKET, "", endpoint_url=s3_server.url).ensure_bucket()
    return BUCKET


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SnapshotStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
    else:
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        # A fresh prefix per test: one bucket, no cross-talk. Small parts so that a 300 KB
        # file goes up as a real parallel multipart upload.
        yield S3Store(
            bucket, f"t-{uuid.uuid4().hex[:10]}", endpoint_url=server.url,
            multipart_threshold_bytes=5 * 1024 * 1024, multipart_part_bytes=5 * 1024 * 1024,
        )  # fmt: skip


def test_put_and_get_bytes(store: SnapshotStore) -> None:
    store.put_bytes("snapshots/m/v1/manifest.json", b'{"a": 1}')
    assert store.get_bytes("snapshots/m/v1/manifest.json") == b'{"a": 1}'
    assert store.size("snapshots/m/v1/manifest.json") == 8
    assert store.exists("snapshots/m/v1/manifest.json")


def test_put_replaces_whole_object(store: SnapshotStore) -> None:
    store.put_bytes("k/a", b"first version, long")
    store.put_bytes("k/a", b"second")
    assert store.get_bytes("k/a") == b"second"


def test_empty_object(store: SnapshotStore) -> None:
    store.put_bytes("k/empty", b"")
    assert store.get_bytes("k/empty") == b""
    assert store.size("k/empty") == 0
    assert store.get_range("k/empty", 0, 0) == b""


def test_missing_key(store: SnapshotStore) -> None:
    with pytest.raises(SnapshotNotFoundError, match="k/missing"):
        store.get_bytes("k/missing")
    with pytest.raises(SnapshotNotFoundError):
        store.get_range("k/missing", 0, 10)
    with pytest.raises(SnapshotNotFoundError):
        store.get_range("k/missing", 0, 0)
    assert store.size("k/missing") is None
    assert not store.exists("k/missing")
    store.delete("k/missing")  # a no-op


def test_put_file_with_progress(store: SnapshotStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 24_000  # ~6 MB: multipart on S3 (5 MB parts)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    moved: list[int] = []
    store.put_file("snapshots/m/v1/model.safetensors", src, progress=moved.append)
    assert sum(moved) == len(data)
    assert store.size("snapshots/m/v1/model.safetensors") == len(data)
    assert store.get_bytes("snapshots/m/v1/model.safetensors") == data


def test_get_range(store: SnapshotStore) -> None:
    data = bytes(range(200))
    store.put_bytes("k/r", data)
    assert store.get_range("k/r", 0, 10) == data[:10]
    assert store.get_range("k/r", 10, 20) == data[10:20]
    assert store.get_range("k/r", 195, 200) == data[195:]
    # Past the end: fewer bytes, never an error (the caller checks the length).
    assert store.get_range("k/r", 190, 250) == data[190:]
    assert store.get_range("k/r", 300, 310) == b""
    with pytest.raises(StoreError, match="range"):
        store.get_range("k/r", 5, 2)
    with pytest.raises(StoreError, match="range"):
        store.get_range("k/r", -1, 2)


def test_list_keys(store: SnapshotStore) -> None:
    assert store.list_keys("snapshots/") == []
    for key in ["snapshots/b/v1/manifest.json", "snapshots/a/v2/x", "snapshots/a/v1/x", "other/y"]:
        store.put_bytes(key, b"1")
    assert store.list_keys("snapshots/") == [
        "snapshots/a/v1/x", "snapshots/a/v2/x", "snapshots/b/v1/manifest.json",
    ]  # fmt: skip
    assert store.list_keys("snapshots/a/") == ["snapshots/a/v1/x", "snapshots/a/v2/x"]
    assert store.list_keys("snapshots/a") == ["snapshots/a/v1/x", "snapshots/a/v2/x"]
    assert store.list_keys("snap") == store.list_keys("snapshots/")
    assert len(store.list_keys("")) == 4


def test_delete(store: SnapshotStore) -> None:
    store.put_bytes("k/d/x", b"1")
    store.put_bytes("k/d2", b"2")
    store.delete("k/d/x")
    assert not store.exists("k/d/x")
    assert store.list_keys("k/") == ["k/d2"]


@pytest.mark.parametrize(
    "key", ["../escape", "/abs/key", "a//b", "a/./b", "a/../b", "", "a/b/", ".hidden", "a\\b", "a/b\n", "k\n"]
)
def test_unsafe_keys_are_refused(store: SnapshotStore, key: str) -> None:
    with pytest.raises(StoreError, match="key"):
        store.put_bytes(key, b"x")
    with pytest.raises(StoreError, match="key"):
        store.get_bytes(key)


def test_get_bytes_with_a_bound(store: SnapshotStore) -> None:
    """A caller that knows how large an object may be (a manifest, an alias) reads no more."""
    store.put_bytes("k/bounded", b"x" * 100)
    assert store.get_bytes("k/bounded", max_bytes=100) == b"x" * 100
    with pytest.raises(ObjectTooLargeError, match="100 bytes.*limit of 99") as info:
        store.get_bytes("k/bounded", max_bytes=99)
    assert "xxxx" not in str(info.value)
    assert isinstance(info.value, StoreError)
    with pytest.raises(SnapshotNotFoundError):
        store.get_bytes("k/missing", max_bytes=10)
    store.put_bytes("k/empty", b"")
    assert store.get_bytes("k/empty", max_bytes=0) == b""


def test_catalog_reads_manifests_with_a_bound(store: SnapshotStore) -> None:
    from warmstart.infra.errors import ManifestError
    from warmstart.snapshot import catalog
    from warmstart.snapshot.manifest import MAX_MANIFEST_BYTES

    store.put_bytes("snapshots/m/v1/manifest.json", b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ManifestError, match="over the .* limit"):
        catalog.read_manifest(store, "m", "v1")
    store.put_bytes("snapshots/m/_aliases/live.json", b'{"version": "v1"}' + b" " * 70_000)
    with pytest.raises(ManifestError, match="alias .* over the .* limit"):
        catalog.get_alias(store, "m")


def test_describe_names_the_location(store: SnapshotStore) -> None:
    text = store.describe()
    assert text.startswith(("file://", "s3://"))


def test_failed_upload_leaves_nothing(store: SnapshotStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        store.put_file("k/nothing", tmp_path / "does-not-exist.bin")
    assert not store.exists("k/nothing")
    assert store.list_keys("k/") == []


# --- implementation-specific ------------------------------------------------------------


def test_unreachable_endpoint_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in EmbeddedS3.credentials_env().items():
        monkeypatch.setenv(name, value)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = S3Store("bucket", "p", endpoint_url=endpoint, connect_timeout_s=0.5, max_attempts=1)
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 100)
    start = time.monotonic()
    calls = (
        lambda: store.get_bytes("k"), lambda: store.size("k"), lambda: store.list_keys(""),
        lambda: store.get_range("k", 0, 10), lambda: store.put_bytes("k", b"1"),
        lambda: store.put_file("k", src), lambda: store.ensure_bucket(),
    )  # fmt: skip
    for call in calls:
        with pytest.raises(StoreUnreachableError, match=endpoint.replace(".", r"\.")):
            call()
    assert time.monotonic() - start < 10  # fails fast, no long retry loop


def test_missing_credentials_are_a_clear_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Store("bucket", "", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreError, match="AWS_ACCESS_KEY_ID"):
        store.get_bytes("k")


def test_missing_bucket_is_a_clear_store_error(s3_server: Any) -> None:
    store = S3Store("no-such-bucket-here", "", endpoint_url=s3_server.url)
    with pytest.raises(StoreError, match="no-such-bucket-here"):
        store.put_bytes("k", b"1")


def test_s3_prefix_isolates_stores(s3_server: Any, s3_bucket: str) -> None:
    one = S3Store(s3_bucket, "iso-one", endpoint_url=s3_server.url)
    two = S3Store(s3_bucket, "iso-one-two", endpoint_url=s3_server.url)
    one.put_bytes("k/x", b"1")
    two.put_bytes("k/y", b"2")
    assert one.list_keys("k/") == ["k/x"]
    assert two.list_keys("k/") == ["k/y"]


def test_local_store_writes_atomically(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("a/b", b"1")
    # No temporary files are left next to the object, and none are ever listed.
    assert [p.name for p in (tmp_path / "s" / "a").iterdir()] == ["b"]
    (tmp_path / "s" / "a" / ".ws-tmp-b.123").write_bytes(b"partial")
    assert store.list_keys("a/") == ["a/b"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///abs/path", Path("/abs/path")),
        ("file://./rel/path", Path("rel/path").absolute()),
        ("file:rel/path", Path("rel/path").absolute()),
    ],
)
def test_open_store_url_file_forms(url: str, expected: Path) -> None:
    store = open_store_url(url)
    assert isinstance(store, LocalStore)
    assert store.root == expected


def test_open_store_url_s3_and_bad_schemes() -> None:
    from warmstart.infra.errors import SettingsError

    store = open_store_url("s3://bkt/some/prefix/", endpoint_url="http://127.0.0.1:9")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("bkt", "some/prefix")
    assert "http://127.0.0.1:9" in store.describe()
    for bad in ("http://x/y", "s3:///nobucket", "file:"):
        with pytest.raises(SettingsError):
            open_store_url(bad)
