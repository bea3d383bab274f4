"""The snapshot store interface: a flat key -> bytes namespace, as S3 is.

Publish and fetch need only these operations, so a local directory and an S3 bucket are
interchangeable (both pass ``tests/integration/test_store_contract.py``). Keys are relative,
``/``-separated paths such as ``snapshots/<model>/<version>/manifest.json``; they are built by
:mod:`warmstart.snapshot.names` and checked again here, so that no key escapes the store's root.

Contract (what every implementation guarantees):

- a ``put_*`` is atomic: a reader sees the old object, or nothing, or the whole new one;
- ``get_bytes`` / ``get_range`` of a missing key raise :class:`SnapshotNotFoundError`;
- ``get_bytes(key, max_bytes)`` checks the object's size before reading it and raises
  :class:`ObjectTooLargeError` when it is larger (callers bound what they parse: manifests,
  aliases);
- ``get_range(key, start, end)`` reads the half-open range ``[start, end)``, returning fewer
  bytes only when the object ends before ``end`` (callers check the length);
- ``size`` of a missing key is ``None``; ``delete`` of a missing key is a no-op;
- ``list_keys(prefix)`` returns every key that starts with ``prefix``, sorted;
- any other failure is a :class:`StoreError` (:class:`StoreUnreachableError` when the
  endpoint cannot be reached), never a library's own exception.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path

from warmstart.infra.errors import ObjectTooLargeError, StoreError
from warmstart.infra.progress import ProgressCallback

__all__ = [
    "ProgressCallback", "SnapshotStore", "check_key", "check_max_bytes", "check_prefix",
    "check_range", "too_large",
]  # fmt: skip

#: Matched with ``fullmatch``: ``$`` would also accept a trailing newline.
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
MAX_KEY_LENGTH = 512


def check_key(key: object) -> str:
    """Return ``key`` if it is a safe relative object key.

    Raises:
        StoreError: not a string, empty, too long, absolute, or with an empty, ``.``/``..``
            or otherwise unsafe path segment.
    """
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise StoreError(f"object key {key!r} must be a non-empty string of at most {MAX_KEY_LENGTH} chars")
    for segment in key.split("/"):
        if ".." in segment or not _SEGMENT.fullmatch(segment):
            raise StoreError(
                f"object key {key!r} has an unsafe segment {segment!r}: keys are relative paths "
                "of letters, digits, '.', '_' and '-', with no '..' and no empty segments"
            )
    return key


def check_prefix(prefix: object) -> str:
    """Like :func:`check_key` but also allows ``""`` and a trailing ``/``."""
    if prefix == "":
        return ""
    if not isinstance(prefix, str):
        raise StoreError(f"key prefix {prefix!r} must be a string")
    check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


class SnapshotStore(ABC):
    """Where snapshots live: an object store with atomic puts and ranged reads."""

    @abstractmethod
    def put_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        """Upload the file at ``path`` as ``key`` (large files in parallel parts).

        Args:
            progress: called with byte counts as the upload advances.

        Raises:
            StoreError: the upload failed (nothing is visible under ``key`` then).
        """

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` as ``key``, atomically. Raises StoreError."""

    @abstractmethod
    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The whole object.

        Args:
            max_bytes: the most bytes the caller accepts; the object's size is checked before
                its body is read (None: no bound, for objects the caller sized already).

        Raises:
            SnapshotNotFoundError: the key does not exist.
            ObjectTooLargeError: the object is larger than ``max_bytes`` (nothing was read).
            StoreError: another failure.
        """

    @abstractmethod
    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object (fewer if it ends first).

        Raises:
            SnapshotNotFoundError: the key does not exist.
            StoreError: a bad range (``start < 0`` or ``end < start``) or a failed read.
        """

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when it does not exist. Raises StoreError."""

    def exists(self, key: str) -> bool:
        """True when ``key`` exists."""
        return self.size(key) is not None

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted. Raises StoreError."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` if it exists. Raises StoreError."""

    @abstractmethod
    def describe(self) -> str:
        """Where this store is, for messages (``s3://bucket/prefix at http://...``)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def check_range(start: int, end: int) -> None:
    if start < 0 or end < start:
        raise StoreError(f"byte range [{start}, {end}) is invalid: need 0 <= start <= end")


def check_max_bytes(max_bytes: int | None) -> None:
    if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 0):
        raise StoreError(f"max_bytes {max_bytes!r} must be None or an int >= 0")


def too_large(store: SnapshotStore, key: str, size: int, max_bytes: int) -> ObjectTooLargeError:
    return ObjectTooLargeError(
        f"{key!r} in {store.describe()} is {size} bytes, over the limit of {max_bytes} for what "
        "is read from it: it is not an object warmstart wrote; remove or republish it"
    )
