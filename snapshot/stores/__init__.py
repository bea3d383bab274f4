"""Snapshot stores: where published snapshots live (S3, or a local directory).

:func:`open_store` builds the store that the settings name; everything else only sees the
:class:`SnapshotStore` interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from warmstart.infra.errors import SettingsError
from warmstart.snapshot.stores.base import SnapshotStore
from warmstart.snapshot.stores.local import LocalStore

if TYPE_CHECKING:
    from warmstart.infra.settings import Settings

__all__ = ["LocalStore", "SnapshotStore", "open_store", "open_store_url"]


def open_store_url(
    url: str, endpoint_url: str | None = None, region: str = "us-east-1"
) -> SnapshotStore:
    """The store at ``url``.

    Args:
        url: ``s3://bucket/prefix``, ``file:///absolute/path``, ``file://./relative`` or
            ``file:relative`` (after ``file://`` or ``file:`` the rest is a path).
        endpoint_url: the S3 endpoint (moto, MinIO); None for AWS.
        region: the S3 region.

    Raises:
        SettingsError: another scheme, or an S3 URL without a bucket.
    """
    if url.startswith("s3://"):
        parsed = urlparse(url)
        if not parsed.netloc:
            raise SettingsError(f"WARMSTART_STORE_URL {url!r} names no bucket: use s3://bucket/prefix")
        from warmstart.snapshot.stores.s3 import S3Store  # boto3 only when S3 is used

        return S3Store(parsed.netloc, parsed.path.strip("/"), endpoint_url=endpoint_url, region=region)
    for scheme in ("file://", "file:"):
        if url.startswith(scheme):
            path = url[len(scheme) :]
            if not path:
                break
            return LocalStore(Path(path))
    raise SettingsError(
        f"WARMSTART_STORE_URL {url!r} is not supported: use s3://bucket/prefix, "
        "file:///absolute/path or file://./relative/path"
    )


def open_store(settings: "Settings") -> SnapshotStore:
    """The store that ``settings.store_url`` names (see :func:`open_store_url`)."""
    return open_store_url(settings.store_url, settings.s3_endpoint_url, settings.s3_region)
