"""A snapshot store in a local directory: for development, tests and shared filesystems.

Each key is a regular file under ``root``. Writes go to a temporary file in the same
directory, are fsynced, then renamed into place, so a reader never sees half an object.

Whoever can write into the directory (a shared filesystem) is not trusted further than the
bytes of the files: every key is walked from the root one directory at a time through
directory descriptors opened with ``O_NOFOLLOW``, so no symbolic link is ever followed, for
reading, writing or deleting (``UnsafeObjectError`` names the key, never what a link points
at). Only regular files are read: anything else (a FIFO, which would block the reading thread
for ever; a device such as ``/dev/zero``, which would never end) is refused after an
``lstat``, and again by ``fstat`` on the descriptor, which is opened ``O_NONBLOCK`` so that
even a FIFO swapped in between cannot block. The root itself may be a link: it is the
operator's configuration, not the store's data.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from warmstart.infra.errors import SnapshotNotFoundError, StoreError, UnsafeObjectError
from warmstart.snapshot.stores.base import (
    ProgressCallback,
    SnapshotStore,
    check_key,
    check_max_bytes,
    check_prefix,
    check_range,
    too_large,
)

_TMP_MARK = ".ws-tmp-"
_COPY_CHUNK_BYTES = 8 * 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_MISSING = (FileNotFoundError, NotADirectoryError)


class LocalStore(SnapshotStore):
    """Objects as regular files under ``root`` (created on first write)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().absolute()

    def describe(self) -> str:
        return f"file://{self.root}"

    # --- walking without following links ----------------------------------------------------

    def _fail(self, action: str, key: str, e: OSError) -> StoreError:
        return StoreError(f"could not {action} {key!r} in {self.describe()}: {e.strerror or e}")

    def _not_found(self, key: str) -> SnapshotNotFoundError:
        return SnapshotNotFoundError(f"{key!r} does not exist in {self.describe()}")

    def _link(self, key: str) -> UnsafeObjectError:
        return UnsafeObjectError(
            f"{key!r} in {self.describe()} is a symbolic link or lies under one: the file store "
            "serves only regular files inside its root and follows no links; remove the link"
        )

    def _special(self, key: str) -> UnsafeObjectError:
        return UnsafeObjectError(
            f"{key!r} in {self.describe()} is not a regular file (a FIFO, socket or device): "
            "refused; remove it from the store"
        )

    def _step(self, dir_fd: int, name: str, key: str) -> int:
        """Open the directory ``name`` inside ``dir_fd``, never through a link."""
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            # O_DIRECTORY | O_NOFOLLOW on a link fails with ENOTDIR (or ELOOP): tell them apart.
            if e.errno in (errno.ENOTDIR, errno.ELOOP) and _is_link(dir_fd, name):
                raise self._link(key) from None
            raise

    def _open_dir(self, dirs: list[str], key: str, create: bool = False) -> int:
        """A descriptor of the directory ``root/dirs[0]/dirs[1]/...``, walked one segment at a
        time without following links (and made on the way with ``create``).

        Raises:
            UnsafeObjectError: a directory on the way is a symbolic link.
            FileNotFoundError / NotADirectoryError: a directory on the way is missing or a file.
        """
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in dirs:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                next_fd = self._step(fd, part, key)
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def _parent(self, key: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """Yield ``(descriptor of the key's directory, the key's last segment)``; raises as
        :meth:`_open_dir`."""
        *dirs, name = check_key(key).split("/")
        fd = self._open_dir(dirs, key, create)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def _open_regular(self, key: str) -> tuple[int, os.stat_result]:
        """A read-only descriptor of the regular file ``key`` and its ``fstat``.

        Raises:
            SnapshotNotFoundError: missing, or a directory.
            UnsafeObjectError: a link, or not a regular file (never opened when seen first).
            StoreError: another failure.
        """
        try:
            with self._parent(key) as (dir_fd, name):
                before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                self._check_regular(key, before)
                fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except _MISSING as e:
            raise self._not_found(key) from e
        except OSError as e:
            if e.errno == errno.ELOOP:  # replaced by a link since the lstat
                raise self._link(key) from None
            raise self._fail("open", key, e) from e
        try:
            st = os.fstat(fd)
            self._check_regular(key, st)  # it may have been swapped since the lstat
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def _check_regular(self, key: str, st: os.stat_result) -> None:
        if stat.S_ISLNK(st.st_mode):
            raise self._link(key)
        if stat.S_ISDIR(st.st_mode):
            raise self._not_found(key)
        if not stat.S_ISREG(st.st_mode):
            raise self._special(key)

    # --- writing ----------------------------------------------------------------------------

    def _write_atomic(self, key: str, fill: Callable[[BinaryIO], object]) -> None:
        try:
            with self._parent(key, create=True) as (dir_fd, name):
                tmp = f"{_TMP_MARK}{name}.{uuid.uuid4().hex[:12]}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
                try:
                    with os.fdopen(fd, "wb") as out:
                        fill(out)
                        out.flush()
                        os.fsync(out.fileno())
                    # rename replaces a planted link itself, never what it points at
                    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp, dir_fd=dir_fd)
        except OSError as e:
            raise self._fail("write", key, e) from e

    def put_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        def fill(out: BinaryIO) -> None:
            with open(path, "rb") as src:
                while chunk := src.read(_COPY_CHUNK_BYTES):
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))

        self._write_atomic(key, fill)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomic(key, lambda out: out.write(data))

    # --- reading ----------------------------------------------------------------------------

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        check_max_bytes(max_bytes)
        fd, st = self._open_regular(key)
        try:
            if max_bytes is not None and st.st_size > max_bytes:
                raise too_large(self, key, st.st_size, max_bytes)
            with os.fdopen(fd, "rb", closefd=False) as f:
                # One byte more than allowed: a file that grew since the fstat is caught too.
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except OSError as e:
            raise self._fail("read", key, e) from e
        finally:
            os.close(fd)
        if max_bytes is not None and len(data) > max_bytes:
            raise too_large(self, key, len(data), max_bytes)
        return data

    def get_range(self, key: str, start: int, end: int) -> bytes:
        check_range(start, end)
        fd, _ = self._open_regular(key)
        try:
            return os.pread(fd, end - start, start) if end > start else b""
        except OSError as e:
            raise self._fail("read", key, e) from e
        finally:
            os.close(fd)

    def size(self, key: str) -> int | None:
        try:
            with self._parent(key) as (dir_fd, name):
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except _MISSING:
            return None
        except OSError as e:
            raise self._fail("stat", key, e) from e
        if stat.S_ISDIR(st.st_mode):
            return None
        self._check_regular(key, st)
        return st.st_size

    def list_keys(self, prefix: str = "") -> list[str]:
        """Regular files only: links (to files or directories) and special files are skipped."""
        check_prefix(prefix)
        # Walk only the deepest directory the prefix names, not the whole store.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        try:
            base_fd = self._open_dir(base.split("/") if base else [], prefix)
        except (UnsafeObjectError, *_MISSING):
            return []  # nothing under a link is part of the store
        except OSError as e:
            raise self._fail("list", prefix, e) from e
        try:
            return sorted(key for key in self._walk(base_fd, base) if key.startswith(prefix))
        finally:
            os.close(base_fd)

    @staticmethod
    def _walk(base_fd: int, base: str) -> Iterator[str]:
        # fwalk with follow_symlinks=False descends into no linked directory.
        for dirpath, _dirs, files, dir_fd in os.fwalk(".", dir_fd=base_fd, follow_symlinks=False):
            for name in files:
                if name.startswith(_TMP_MARK):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                        yield os.path.normpath(os.path.join(base, dirpath, name))

    def delete(self, key: str) -> None:
        *dirs, _ = check_key(key).split("/")
        try:
            with self._parent(key) as (dir_fd, name):
                os.unlink(name, dir_fd=dir_fd)  # a link is removed itself, never its target
        except (*_MISSING, IsADirectoryError):
            return
        except OSError as e:
            raise self._fail("delete", key, e) from e
        # Prune directories left empty, deepest first, never the root.
        for depth in range(len(dirs), 0, -1):
            try:
                with self._parent("/".join(dirs[:depth])) as (dir_fd, name):
                    os.rmdir(name, dir_fd=dir_fd)
            except (OSError, UnsafeObjectError):
                break

    def remove_all(self) -> None:
        """Delete the whole store directory (tests and demo resets only)."""
        shutil.rmtree(self.root, ignore_errors=True)


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
