"""The beat's catalog of published models (names and sizes), and what it does when the store
cannot be read.

The store is read again every ``catalog_ttl_s``. When a read fails — the store raises
:class:`~warmstart.infra.errors.StoreError` (S3 unreachable, a directory that cannot be
listed), or a listing comes back with no model at all where the last one had some (a file
store whose folder is gone lists nothing rather than failing) — the last catalog is kept,
one warning is logged for the whole outage, and the next read is tried after the TTL again,
so the beat goes on planning, keeping models warm, checking health and rescuing queues.

Known limit: a store emptied on purpose looks like an outage; the beat keeps the models of
its last catalog until it restarts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from warmstart.infra.errors import SnapshotError, StoreError
from warmstart.snapshot.catalog import list_models, read_manifest, resolve_version
from warmstart.snapshot.stores.base import SnapshotStore

log = logging.getLogger(__name__)


class Catalog:
    """Published models and their sizes in bytes, read from ``store`` at most every
    ``ttl_s`` seconds; the last good read is kept while the store cannot be read."""

    def __init__(self, store: SnapshotStore, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        self._sizes: dict[str, int] = {}
        self._read_at: float | None = None
        #: Why the store cannot be read now; None while it can (and before the first read).
        self.outage: str | None = None
        self._ever_read = False

    @property
    def current(self) -> bool:
        """True when the catalog comes from the store's latest read (no outage, and read)."""
        return self._ever_read and self.outage is None

    def sizes(self) -> dict[str, int]:
        """Model name -> size of its live version in bytes (the last good read during an
        outage; empty when the store was never read)."""
        now = self.clock()
        if self._read_at is not None and now - self._read_at < self.ttl_s:
            return self._sizes
        self._read_at = now  # a failed read too: try again after the TTL, not every tick
        try:
            sizes = self._read()
        except StoreError as e:
            self._down(str(e))
            return self._sizes
        if not sizes and self._sizes:
            self._down(f"{self.store.describe()} lists no published model where it listed "
                       f"{len(self._sizes)}")
            return self._sizes
        if self.outage is not None:
            log.warning("the snapshot store %s answers again; catalog refreshed (%d models)",
                        self.store.describe(), len(sizes))
        self.outage, self._ever_read, self._sizes = None, True, sizes
        return sizes

    def _read(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for model in list_models(self.store):
            try:
                manifest = read_manifest(self.store, model, resolve_version(self.store, model))
            except StoreError:
                raise  # the store itself failed: an outage, not a broken model
            except SnapshotError as e:
                log.warning("skipping model %s: %s", model, e)
                continue
            sizes[model] = manifest.weights.size_bytes
        return sizes

    def _down(self, reason: str) -> None:
        if self.outage is None:
            log.warning(
                "the snapshot store cannot be read (%s); the beat goes on with the last catalog "
                "(%d models) until it answers: check WARMSTART_STORE_URL and the store",
                reason, len(self._sizes))
        self.outage = reason
