"""A snapshot store in a local directory: for development, tests and shared filesystems.

Each key is a file under ``root``. Writes go to a temporary file in the same directory, are
fsynced, then renamed into place, so a reader never sees half an object.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from warmstart.infra.errors import SnapshotNotFoundError, StoreError
from warmstart.snapshot.stores.base import (
    ProgressCallback,
    SnapshotStore,
    check_key,
    check_prefix,
    check_range,
)

_TMP_MARK = ".ws-tmp-"
_COPY_CHUNK_BYTES = 8 * 1024 * 1024


class LocalStore(SnapshotStore):
    """Objects as files under ``root`` (created on first write)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().absolute()

    def describe(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _fail(self, action: str, key: str, e: OSError) -> StoreError:
        return StoreError(f"could not {action} {key!r} in {self.describe()}: {e}")

    def _write_atomic(self, key: str, fill: Callable[[BinaryIO], object]) -> None:
        target = self._path(key)
        tmp = target.parent / f"{_TMP_MARK}{target.name}.{uuid.uuid4().hex[:12]}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except OSError as e:
            raise self._fail("write", key, e) from e
        finally:
            tmp.unlink(missing_ok=True)

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

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise SnapshotNotFoundError(f"{key!r} does not exist in {self.describe()}") from e
        except OSError as e:
            raise self._fail("read", key, e) from e

    def get_range(self, key: str, start: int, end: int) -> bytes:
        check_range(start, end)
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return os.pread(f.fileno(), end - start, start) if end > start else b""
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise SnapshotNotFoundError(f"{key!r} does not exist in {self.describe()}") from e
        except OSError as e:
            raise self._fail("read", key, e) from e

    def size(self, key: str) -> int | None:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._fail("stat", key, e) from e
        return st.st_size if path.is_file() else None

    def list_keys(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        # Walk only the deepest directory the prefix names, not the whole store.
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / base_rel if base_rel else self.root
        keys: list[str] = []
        try:
            for dirpath, _dirs, files in os.walk(base):
                for name in files:
                    if name.startswith(_TMP_MARK):
                        continue
                    key = Path(dirpath, name).relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        keys.append(key)
        except OSError as e:
            raise self._fail("list", prefix, e) from e
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            return
        except OSError as e:
            raise self._fail("delete", key, e) from e
        # Prune directories left empty, never above the root.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def remove_all(self) -> None:
        """Delete the whole store directory (tests and demo resets only)."""
        shutil.rmtree(self.root, ignore_errors=True)
