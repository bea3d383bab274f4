"""The catalog over a store that holds more than snapshots: stray keys, hostile aliases."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from warmstart.infra.errors import ManifestError
from warmstart.snapshot import catalog
from warmstart.snapshot.manifest import Manifest
from warmstart.snapshot.stores import LocalStore
from warmstart.snapshot.stores.base import SnapshotStore
from tests.unit.snapshot.test_cache import publish_tiny


class RawKeysStore(LocalStore):
    """Lists keys that a bucket may hold but that no safe name could produce (S3 allows any)."""

    def __init__(self, root: Path, extra: list[str]) -> None:
        super().__init__(root)
        self.extra = extra

    def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(super().list_keys(prefix) + [k for k in self.extra if k.startswith(prefix)])


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, Manifest]:
    store = LocalStore(tmp_path / "store")
    return store.root, publish_tiny(store, "tiny")


@pytest.mark.parametrize(
    "stray",
    [
        "snapshots/Bad Name!/v1/manifest.json",
        "snapshots/tiny/bad version!/manifest.json",
        "snapshots/tiny/v1\n/manifest.json",
        "snapshots/manifest.json",
        "snapshots/README",
        "snapshots/tiny/v1/extra/manifest.json",
    ],
)
def test_stray_keys_do_not_break_listing(
    published: tuple[Path, Manifest], stray: str, caplog: pytest.LogCaptureFixture
) -> None:
    root, _ = published
    store = RawKeysStore(root, [stray])
    with caplog.at_level(logging.WARNING, logger="warmstart.snapshot.catalog"):
        assert catalog.list_models(store) == ["tiny"]
        assert catalog.list_versions(store, "tiny") == ["v1"]
        summary = catalog.summarize(store)
    assert [(m["model"], [r["version"] for r in m["versions"]]) for m in summary] == [("tiny", ["v1"])]
    assert any("stray" in r.getMessage() and repr(stray)[1:-1][:20] in r.getMessage() for r in caplog.records)


def test_a_real_file_directly_under_snapshots_is_skipped(published: tuple[Path, Manifest]) -> None:
    root, _ = published
    store = LocalStore(root)
    store.put_bytes("snapshots/notes.txt", b"hello")
    store.put_bytes("snapshots/Bad_Name/v1/manifest.json", b"{}")  # a valid name, a broken manifest
    assert catalog.list_models(store) == ["Bad_Name", "tiny"]
    summary = catalog.summarize(store)
    assert [m["model"] for m in summary] == ["Bad_Name", "tiny"]
    assert summary[0]["versions"] == []  # its manifest is unreadable: skipped, logged
    assert len(summary[1]["versions"]) == 1


def _store_with_alias(root: Path, body: bytes) -> SnapshotStore:
    store = LocalStore(root)
    store.put_bytes("snapshots/tiny/_aliases/live.json", body)
    return store


def test_deeply_nested_alias_is_a_manifest_error(published: tuple[Path, Manifest]) -> None:
    """20k levels of nesting (under the size bound) used to escape as an untyped RecursionError."""
    root, _ = published
    store = _store_with_alias(root, b'{"version": ' + b"[" * 20_000 + b"]" * 20_000 + b"}")
    with pytest.raises(ManifestError, match="levels deep"):
        catalog.get_alias(store, "tiny")


@pytest.mark.parametrize("body", [b"[1]", b'"v1"', b"null", b'{"version": 1}', b"\xff"])
def test_malformed_aliases_are_manifest_errors(published: tuple[Path, Manifest], body: bytes) -> None:
    root, _ = published
    with pytest.raises(ManifestError):
        catalog.get_alias(_store_with_alias(root, body), "tiny")


def test_a_bad_alias_does_not_break_listing(published: tuple[Path, Manifest]) -> None:
    root, _ = published
    store = _store_with_alias(root, b"[" * 100)
    store.put_bytes("snapshots/tiny/_aliases/canary.json", b'{"version": "v1"}')
    assert catalog.list_aliases(store, "tiny") == {"canary": "v1"}
