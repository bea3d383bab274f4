"""The local snapshot cache (the DISK tier): verified copies of snapshots, within a byte budget.

Layout::

    <root>/<model>/<version>/manifest.json        written last: the entry is complete
    <root>/<model>/<version>/model.safetensors    or, sharded, each shard under its own name
    <root>/<model>/<version>/golden.safetensors
    <root>/<model>/<version>/.used                touched on every use (LRU recency)
    <root>/<model>/<version>/.verified            its mtime: when the files were last re-hashed
    <root>/.locks/<model>@<version>.lock          one flock per entry, never deleted
    <root>/.locks/budget.lock                     serialises space accounting

A download fetches parallel ranged GETs into a temporary file in the entry's directory,
preallocated to its full size (so that concurrent fetches count it against the budget), then
fsyncs it and verifies size, sha256 and (for the weights) the header against the manifest
*before* the atomic rename into place (each shard of a sharded snapshot on its own, against
its own entry in the manifest). The manifest copy is written last. A failure leaves no entry
behind.

Several processes fetching one snapshot: the per-entry ``flock`` lets exactly one download;
the others block, then find the complete entry, verify it and use it. Eviction takes the
victim's lock without blocking and skips entries being fetched. Linux keeps an unlinked,
memory-mapped file alive, so evicting an entry a worker has mapped is safe for that worker.

A fetch of a cached entry checks only sizes and the manifest. :meth:`SnapshotCache.verify`
re-hashes an entry's files against the manifest's sha256 (evicting it on a mismatch, so the
next fetch downloads it again), holding no lock while it reads; :meth:`~SnapshotCache.verify_next`
does that for the least recently verified entries within a byte budget per call, for a
background loop. The time of the last verification is the mtime of ``.verified``.

Cached files are written once and renamed into place, never modified. A file truncated under
a process that has it mapped (by hand, or a failing disk) kills that process with ``SIGBUS``
on its next access to a lost page: no check here can prevent that.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from warmstart.infra.errors import (
    CacheFullError,
    IntegrityError,
    InvalidNameError,
    ManifestError,
    SnapshotNotFoundError,
)
from warmstart.snapshot.header import check_file
from warmstart.snapshot.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from warmstart.snapshot.names import GOLDEN_FILE, MANIFEST_FILE, WEIGHTS_FILE, validate_name, version_key
from warmstart.infra.progress import ProgressCallback, transfer_progress
from warmstart.snapshot.stores.base import SnapshotStore

if TYPE_CHECKING:
    from warmstart.infra.settings import Settings

MiB = 1024 * 1024
LOCKS_DIR = ".locks"
USED_MARKER = ".used"
VERIFIED_MARKER = ".verified"
_PART_MARK = ".part-"
_HASH_CHUNK_BYTES = 8 * MiB


@dataclass(frozen=True)
class LocalSnapshot:
    """A complete, verified snapshot in the cache.

    ``downloaded_bytes`` is 0 when the entry was already cached; ``elapsed_s`` is the time
    :meth:`SnapshotCache.fetch` took (waiting for another process's download included).
    """

    manifest: Manifest
    directory: Path
    downloaded_bytes: int = 0
    elapsed_s: float = 0.0

    @property
    def weights_path(self) -> Path:
        """``model.safetensors``; for a sharded snapshot, the entry's directory, which holds
        the shards (:func:`~warmstart.snapshot.restore.restore_model` takes either)."""
        if self.manifest.weights.shards:
            return self.directory
        return self.directory / WEIGHTS_FILE

    @property
    def weights_paths(self) -> tuple[Path, ...]:
        """Every weights file: the one ``model.safetensors``, or the shards in order."""
        return tuple(self.directory / f.file for f in self.manifest.weights.files)

    @property
    def golden_path(self) -> Path:
        return self.directory / GOLDEN_FILE

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_FILE


@dataclass(frozen=True)
class CacheEntry:
    """One complete cache entry. ``last_used`` is a Unix time in seconds."""

    model: str
    version: str
    directory: Path
    size_bytes: int
    last_used: float


# --- the cache -------------------------------------------------------------------------------


class SnapshotCache:
    """Verified local copies of snapshots under ``root``, at most ``budget_bytes`` in all.

    Args:
        root: the cache directory (created when needed).
        budget_bytes: the most bytes the entries may take; least recently used entries are
            evicted to make room.
        concurrency: parallel ranged GETs per download.
        part_bytes: the size of one ranged GET.
    """

    def __init__(
        self, root: Path | str, budget_bytes: int, concurrency: int = 8, part_bytes: int = 16 * MiB
    ) -> None:
        if budget_bytes <= 0 or concurrency < 1 or part_bytes < 1:
            raise ValueError("budget_bytes, concurrency and part_bytes must be positive")
        self.root = Path(root).expanduser().absolute()
        self.budget_bytes = budget_bytes
        self.concurrency = concurrency
        self.part_bytes = part_bytes

    @classmethod
    def from_settings(cls, settings: "Settings") -> "SnapshotCache":
        """The cache that ``WARMSTART_CACHE_*`` and ``WARMSTART_FETCH_*`` describe."""
        return cls(
            settings.cache_dir,
            settings.cache_budget_bytes,
            settings.fetch_concurrency,
            settings.fetch_part_bytes,
        )

    # --- paths and locks --------------------------------------------------------------------

    def entry_dir(self, model: str, version: str) -> Path:
        return self.root / validate_name(model) / validate_name(version, "version")

    @contextlib.contextmanager
    def _lock(self, name: str, blocking: bool = True) -> Iterator[bool]:
        """Hold ``flock`` on ``<root>/.locks/<name>``; yields False if ``blocking`` is off and
        the lock is taken."""
        locks = self.root / LOCKS_DIR
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _entry_lock(self, model: str, version: str, blocking: bool = True) -> contextlib.AbstractContextManager[bool]:
        return self._lock(f"{model}@{version}.lock", blocking)

    def _budget_lock(self) -> contextlib.AbstractContextManager[bool]:
        return self._lock("budget.lock")

    # --- inspection -------------------------------------------------------------------------

    def _entry_dirs(self) -> Iterator[tuple[str, str, Path]]:
        if not self.root.is_dir():
            return
        for model_dir in sorted(self.root.iterdir()):
            if model_dir.name.startswith(".") or not model_dir.is_dir():
                continue
            for version_dir in sorted(model_dir.iterdir()):
                if version_dir.is_dir():
                    yield model_dir.name, version_dir.name, version_dir

    @staticmethod
    def _dir_bytes(directory: Path) -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for item in directory.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    total += item.stat().st_size
        return total

    def contains(self, model: str, version: str) -> bool:
        """True when a complete entry for ``model``/``version`` is cached."""
        return (self.entry_dir(model, version) / MANIFEST_FILE).is_file()

    def entries(self) -> list[CacheEntry]:
        """Complete entries, least recently used first."""
        found = []
        for model, version, directory in self._entry_dirs():
            try:
                manifest_stat = (directory / MANIFEST_FILE).stat()
            except FileNotFoundError:
                continue
            try:
                last_used = (directory / USED_MARKER).stat().st_mtime
            except FileNotFoundError:
                last_used = manifest_stat.st_mtime
            found.append(CacheEntry(model, version, directory, self._dir_bytes(directory), last_used))
        return sorted(found, key=lambda e: (e.last_used, e.model, e.version))

    def usage_bytes(self) -> int:
        """Bytes held by all entries, including downloads in progress (preallocated)."""
        return sum(self._dir_bytes(directory) for _, _, directory in self._entry_dirs())

    def get(self, model: str, version: str) -> LocalSnapshot | None:
        """The cached entry without fetching (and without touching its recency), or None."""
        directory = self.entry_dir(model, version)
        manifest = _read_cached_manifest(directory)
        return None if manifest is None else LocalSnapshot(manifest, directory)

    # --- eviction ---------------------------------------------------------------------------

    def _remove_entry(self, directory: Path) -> None:
        """Delete an entry, manifest first so that it stops being complete at once. Callers
        hold the entry's lock and the budget lock."""
        with contextlib.suppress(FileNotFoundError):
            (directory / MANIFEST_FILE).unlink()
        shutil.rmtree(directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            directory.parent.rmdir()  # only when no other version is left

    def evict(self, model: str, version: str) -> bool:
        """Remove an entry (waiting for a fetch of it in progress). True if it was there."""
        directory = self.entry_dir(model, version)
        with self._entry_lock(model, version), self._budget_lock():
            existed = directory.exists()
            self._remove_entry(directory)
        return existed

    def _make_room(self, need_bytes: int, keep: tuple[str, str]) -> None:
        """Evict least recently used entries until ``need_bytes`` more fit the budget.

        Called with the budget lock held. Leftovers of crashed downloads go first; entries
        being fetched (locked) and ``keep`` are never touched. Nothing is deleted unless
        enough can be freed.

        Raises:
            CacheFullError: even evicting everything evictable would not make room.
        """
        usage = self.usage_bytes()
        if usage + need_bytes <= self.budget_bytes:
            return
        complete = {(e.model, e.version): e for e in self.entries()}
        partial = [
            (m, v, d) for m, v, d in self._entry_dirs() if (m, v) not in complete and (m, v) != keep
        ]
        order = partial + [(e.model, e.version, e.directory) for e in complete.values() if (e.model, e.version) != keep]
        with contextlib.ExitStack() as held:
            victims: list[Path] = []
            freed = 0
            for model, version, directory in order:
                if usage - freed + need_bytes <= self.budget_bytes:
                    break
                if not held.enter_context(self._entry_lock(model, version, blocking=False)):
                    continue  # being fetched right now
                victims.append(directory)
                freed += self._dir_bytes(directory)
            if usage - freed + need_bytes > self.budget_bytes:
                raise CacheFullError(
                    f"snapshot {keep[0]}/{keep[1]} needs {need_bytes} bytes but the cache at "
                    f"{self.root} holds {usage} of its {self.budget_bytes}-byte budget and only "
                    f"{freed} can be freed now (the rest is being fetched); retry later or raise "
                    "WARMSTART_CACHE_BUDGET_BYTES"
                )
            for directory in victims:
                self._remove_entry(directory)

    # --- fetching ---------------------------------------------------------------------------

    def fetch(self, store: SnapshotStore, manifest: Manifest, show_progress: bool | None = False) -> LocalSnapshot:
        """Make sure a verified copy of the snapshot is in the cache, and return it.

        Args:
            store: where the snapshot is published.
            manifest: its manifest (from :func:`warmstart.snapshot.catalog.read_manifest`).
            show_progress: a progress bar on stderr (None: only on a terminal).

        Returns:
            The local snapshot; ``downloaded_bytes`` is 0 when it was already cached.

        Raises:
            CacheFullError: the snapshot is larger than the whole budget (nothing deleted), or
                room cannot be made now.
            SnapshotNotFoundError: a file of the snapshot is missing from the store.
            IntegrityError: a file's size or sha256 differs from the manifest.
            SafetensorsHeaderError: the weights' header is malformed or disagrees with the
                manifest's tensor index.
            StoreError / StoreUnreachableError: the store failed.
        """
        t0 = time.perf_counter()
        model, version = validate_name(manifest.model), validate_name(manifest.version, "version")
        manifest_bytes = manifest.to_json()
        need = manifest.weights.size_bytes + manifest.golden.size_bytes + len(manifest_bytes)
        if need > self.budget_bytes:
            raise CacheFullError(
                f"snapshot {model}/{version} needs {need} bytes but the whole cache budget is "
                f"{self.budget_bytes} bytes: raise WARMSTART_CACHE_BUDGET_BYTES"
            )
        directory = self.entry_dir(model, version)
        with self._entry_lock(model, version):
            if self._is_valid(directory, manifest):
                (directory / USED_MARKER).touch()
                return LocalSnapshot(manifest, directory, 0, time.perf_counter() - t0)
            weights = {f.file: f for f in manifest.weights.files}
            files = _files(manifest)
            for name, size, _ in files:
                self._check_remote_size(store, model, version, name, size)
            try:
                with self._budget_lock():
                    self._remove_entry(directory)  # a stale or partial entry, if any
                    self._make_room(need, keep=(model, version))
                    directory.mkdir(parents=True, exist_ok=True)
                    temps = [self._reserve(directory, name, size) for name, size, _ in files]
                with transfer_progress(show_progress) as task:
                    for (name, size, sha256), tmp in zip(files, temps):
                        self._download(
                            store, version_key(model, version, name), tmp, size, sha256,
                            task(f"{model}/{version} {name}", size),
                        )  # fmt: skip
                        if name in weights:
                            check_file(tmp, weights[name])
                        os.replace(tmp, directory / name)
                self._write_manifest(directory, manifest_bytes)
            except BaseException:
                with self._budget_lock():
                    self._remove_entry(directory)
                raise
            (directory / USED_MARKER).touch()
        downloaded = manifest.weights.size_bytes + manifest.golden.size_bytes
        return LocalSnapshot(manifest, directory, downloaded, time.perf_counter() - t0)

    def _is_valid(self, directory: Path, manifest: Manifest) -> bool:
        """The cheap check of a cached entry: complete, same manifest, files of the right size."""
        try:
            return _read_cached_manifest(directory) == manifest and all(
                (directory / name).stat().st_size == size for name, size, _ in _files(manifest)
            )
        except OSError:
            return False

    @staticmethod
    def _check_remote_size(store: SnapshotStore, model: str, version: str, name: str, size: int) -> None:
        key = version_key(model, version, name)
        remote = store.size(key)
        if remote is None:
            raise SnapshotNotFoundError(
                f"{name} of {model}/{version} is missing from {store.describe()} although its "
                "manifest exists: the snapshot is damaged; republish it under a new version"
            )
        if remote != size:
            raise IntegrityError(
                f"{name} of {model}/{version} is {remote} bytes in {store.describe()} but the "
                f"manifest records {size}: it is truncated or was replaced; republish the snapshot"
            )

    @staticmethod
    def _reserve(directory: Path, name: str, size: int) -> Path:
        """A temporary file of the full size (sparse), so that the budget counts it now."""
        tmp = directory / f".{name}{_PART_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        return tmp

    def _download(
        self,
        store: SnapshotStore,
        key: str,
        tmp: Path,
        size: int,
        sha256: str,
        progress: ProgressCallback | None,
    ) -> None:
        """Parallel ranged GETs into ``tmp``, hashed in order, fsynced, then verified."""
        digest = hashlib.sha256()
        parts = iter(range(0, size, self.part_bytes))
        with open(tmp, "r+b") as out:
            fd = out.fileno()

            def fetch_part(start: int) -> bytes:
                end = min(start + self.part_bytes, size)
                data = store.get_range(key, start, end)
                if len(data) != end - start:
                    raise IntegrityError(
                        f"{key!r} in {store.describe()} ended at byte {start + len(data)}, before "
                        f"the {size} bytes its manifest records: it is truncated; republish it"
                    )
                os.pwrite(fd, data, start)
                return data

            # A bounded window of parts in flight: parallel GETs, in-order hashing, and
            # memory of at most (concurrency + 2) parts.
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="warmstart-fetch") as pool:
                window: deque[Future[bytes]] = deque()
                try:
                    for start in parts:
                        window.append(pool.submit(fetch_part, start))
                        if len(window) >= self.concurrency + 2:
                            self._consume(window.popleft(), digest, progress)
                    while window:
                        self._consume(window.popleft(), digest, progress)
                except BaseException:
                    for future in window:
                        future.cancel()
                    raise
            out.flush()
            os.fsync(fd)
        actual_size = tmp.stat().st_size
        if actual_size != size:
            raise IntegrityError(f"{key!r} downloaded as {actual_size} bytes, expected {size}")
        if digest.hexdigest() != sha256:
            raise IntegrityError(
                f"{key!r} in {store.describe()} has sha256 {digest.hexdigest()[:16]}… but the "
                f"manifest records {sha256[:16]}…: the stored bytes are corrupt; republish the "
                "snapshot under a new version"
            )

    @staticmethod
    def _consume(future: Future[bytes], digest: "hashlib._Hash", progress: ProgressCallback | None) -> None:
        data = future.result()
        digest.update(data)
        if progress is not None:
            progress(len(data))

    @staticmethod
    def _write_manifest(directory: Path, manifest_bytes: bytes) -> None:
        tmp = directory / f".{MANIFEST_FILE}{_PART_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as out:
            _write_all(out, manifest_bytes)
        os.replace(tmp, directory / MANIFEST_FILE)
        # The rename itself must survive a crash before the entry counts as complete.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


    # --- re-verification ---------------------------------------------------------------------

    def verify(self, model: str, version: str) -> bool:
        """Re-hash a cached entry's weights (each shard) and golden file against its manifest's sha256.

        No lock is held while the files are read, so fetches (of this entry or any other) and
        eviction go on meanwhile; the files are immutable, and an entry evicted meanwhile is
        read through the descriptors opened first. On a mismatch the entry is evicted (under
        its lock, and only if it is still the copy that was hashed), so the next fetch
        downloads it again.

        Returns:
            True when both files match; False when one does not (the entry is then evicted),
            when the entry is incomplete or damaged (evicted too), or when nothing is cached.

        Raises:
            InvalidNameError: ``model`` or ``version`` is not a safe name.
        """
        directory = self.entry_dir(model, version)
        manifest = _read_cached_manifest(directory)
        if manifest is None:
            if directory.exists():
                self._evict_if_same(model, version, None)  # unless a fetch completes it meanwhile
            return False
        hashed: list[tuple[str, tuple[int, int] | None]] = []
        for name, size, sha256 in _files(manifest):
            identity, digest = _hash_file(directory / name, size)
            hashed.append((name, identity))
            if digest != sha256:
                self._evict_if_same(model, version, hashed)
                return False
        _touch_verified(directory)
        return True

    def _evict_if_same(
        self, model: str, version: str, hashed: list[tuple[str, tuple[int, int] | None]] | None
    ) -> None:
        """Evict an entry found bad, unless it was replaced meanwhile.

        Args:
            hashed: the names and identities (device, inode) of the files that were read; the
                entry stays when its files are other ones now (evicted and fetched again: the
                new copy was verified by its fetch). None: the manifest copy was unreadable;
                the entry stays if a fetch has completed it meanwhile.
        """
        directory = self.entry_dir(model, version)
        with self._entry_lock(model, version), self._budget_lock():
            if hashed is None:
                if _read_cached_manifest(directory) is not None:
                    return
            elif [_identity(directory / name) for name, _ in hashed] != [i for _, i in hashed]:
                return
            self._remove_entry(directory)

    def verify_next(self, max_bytes: int) -> list[tuple[str, str, bool]]:
        """Verify the least recently verified entries, about ``max_bytes`` per call.

        For a background loop: the caller's interval and ``max_bytes`` set the rate, so
        verification does not disturb serving. Entries are taken in order of their last
        verification (or, never verified, of their fetch, which verified them) while their
        sizes (:attr:`CacheEntry.size_bytes`) fit ``max_bytes`` in all; at least one entry is
        verified per call, so an entry larger than the budget is not starved.

        Returns:
            ``(model, version, ok)`` per entry verified; ``ok`` False means it was evicted
            (see :meth:`verify`).

        Raises:
            ValueError: ``max_bytes`` is negative.
        """
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        queue = []
        for entry in self.entries():
            last = _mtime_ns(entry.directory / VERIFIED_MARKER) or _mtime_ns(entry.directory / MANIFEST_FILE)
            queue.append((last, entry.model, entry.version, entry.size_bytes))
        results: list[tuple[str, str, bool]] = []
        spent = 0
        for _, model, version, size in sorted(queue):
            if results and spent + size > max_bytes:
                break
            spent += size
            results.append((model, version, self.verify(model, version)))
        return results


def _files(manifest: Manifest) -> list[tuple[str, int, str]]:
    """``(name, size, sha256)`` of every file of a snapshot but its manifest: the weights (one
    file, or each shard), then the golden file."""
    files = [(f.file, f.size_bytes, f.sha256) for f in manifest.weights.files]
    return files + [(GOLDEN_FILE, manifest.golden.size_bytes, manifest.golden.sha256)]


def _read_cached_manifest(directory: Path) -> Manifest | None:
    """The entry's manifest copy, or None when it is missing, not a regular file, too large
    or malformed (read with a bound, never through a link)."""
    try:
        fd = os.open(directory / MANIFEST_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        return parse_manifest(raw)
    except (OSError, ManifestError, InvalidNameError):
        return None
    finally:
        os.close(fd)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _hash_file(path: Path, size: int) -> tuple[tuple[int, int] | None, str | None]:
    """``((device, inode), sha256)`` of a cached file; the digest is None when the file is
    missing, not a regular file, or not ``size`` bytes long (never opened through a link,
    nor blocking on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None, None
    try:
        st = os.fstat(fd)
        identity = (st.st_dev, st.st_ino)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return identity, None
        return identity, _sha256_fd(fd, size)
    except OSError:
        return None, None
    finally:
        os.close(fd)


def _sha256_fd(fd: int, size: int) -> str:
    """The sha256 of the first ``size`` bytes of an open file, read in chunks."""
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(_HASH_CHUNK_BYTES, size - offset), offset)
        if not chunk:
            break  # truncated meanwhile: the digest will not match
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


_last_verified_ns = 0


def _touch_verified(directory: Path) -> None:
    """Record a verification: the marker's mtime, strictly increasing within this process (file
    timestamps are coarser than back-to-back verifications)."""
    global _last_verified_ns
    now = max(time.time_ns(), _last_verified_ns + 1)
    _last_verified_ns = now
    marker = directory / VERIFIED_MARKER
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        os.close(fd)
        os.utime(marker, ns=(now, now), follow_symlinks=False)
    except OSError:
        pass  # evicted meanwhile: nothing to record


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _write_all(out: BinaryIO, data: bytes) -> None:
    out.write(data)
    out.flush()
    os.fsync(out.fileno())


def fetch_version(
    store: SnapshotStore,
    cache: SnapshotCache,
    model: str,
    ref: str = "live",
    show_progress: bool | None = False,
) -> LocalSnapshot:
    """Resolve ``ref`` (an alias or a version) of ``model``, read its manifest, and fetch it.

    Raises:
        As :func:`warmstart.snapshot.catalog.read_resolved` and :meth:`SnapshotCache.fetch`.
    """
    from warmstart.snapshot.catalog import read_resolved

    return cache.fetch(store, read_resolved(store, model, ref), show_progress=show_progress)
