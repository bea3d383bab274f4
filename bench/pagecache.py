"""The OS page cache, for benchmarks: warm a file, evict it, check residency, time a raw read.

Linux semantics: ``POSIX_FADV_DONTNEED`` drops a file's clean, unmapped pages, so the caller
must ``os.sync()`` first (dirty pages are not dropped) and no process may still map the file.
:func:`resident_fraction` (``mincore``) tells whether an eviction really happened, so a
"cold" number measured on a file that stayed cached is reported as such, not trusted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import time
from collections.abc import Iterable
from pathlib import Path

#: Chunk size of the sequential reads: large enough that syscalls cost nothing measurable.
READ_CHUNK_BYTES = 16 * 1024 * 1024


def warm(path: Path, chunk_bytes: int = READ_CHUNK_BYTES) -> int:
    """Read a whole file once so that its pages are in the page cache.

    Returns:
        The number of bytes read.
    """
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    total = 0
    with open(path, "rb", buffering=0) as stream:
        while n := stream.readinto(view):
            total += n
    return total


def evict(paths: Iterable[Path]) -> None:
    """Drop the files' pages from the page cache (after flushing every dirty page).

    Raises:
        OSError: the platform has no ``posix_fadvise`` (not Linux); a cold measurement is then
            impossible and must not be faked.
    """
    if not hasattr(os, "posix_fadvise"):
        raise OSError("os.posix_fadvise is unavailable on this platform: cannot evict files")
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_throughput(path: Path, chunk_bytes: int = READ_CHUNK_BYTES) -> tuple[int, float]:
    """Time one sequential read of the whole file in large chunks, discarding the bytes.

    Evict the file first to measure the storage rather than memory.

    Returns:
        ``(bytes read, seconds)``.
    """
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    total = 0
    with open(path, "rb", buffering=0) as stream:
        t0 = time.perf_counter()
        while n := stream.readinto(view):
            total += n
        elapsed = time.perf_counter() - t0
    return total, elapsed


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
    ]  # fmt: skip
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


def resident_fraction(path: Path) -> float | None:
    """The fraction of the file's pages now in the page cache (0.0 to 1.0), via ``mincore``.

    Mapping the file to ask does not fault any page in. Returns None where ``mincore`` is not
    available, so callers report "unknown" rather than a guess.
    """
    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    try:
        libc = _libc()
    except (OSError, AttributeError):
        return None
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    vector = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            if libc.mincore(address, size, vector) != 0:
                return None
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vector) / pages
