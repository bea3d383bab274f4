"""Read Azure Functions 2019 traces into a typed :class:`Trace`.

The Azure public dataset (Shahrad et al., "Serverless in the Wild", USENIX ATC 2020) ships
three kinds of CSV file. This reader takes the original full-day files and the samples cut
from them:

- invocations: ``HashOwner,HashApp,HashFunction,Trigger,1,…,1440`` (a sample may hold a
  window such as ``480,…,959``), or ``HashFunction,…,minute_1,…,minute_1440``;
- durations: ``[HashOwner,HashApp,]HashFunction,Average,Count,Minimum,Maximum,percentile_…``
  in milliseconds, one row per function;
- memory: ``[HashOwner,HashApp,]SampleCount,AverageAllocatedMb,…`` — the original dataset
  keys memory by *application* (no ``HashFunction``); samples such as vHive's add
  ``HashFunction``. Rows are joined on every key column the two files share, so a per-app
  memory row is given to each function of that app (the app's memory is what each function's
  instance occupies, which is what a model's size stands for here).

Functions without a durations or memory row get the median of the functions that have one
(``DEFAULT_MEMORY_MB`` / ``DEFAULT_DURATION_MS`` when no row at all is known), and the trace
records which ones were defaulted.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from warmstart.infra.errors import TraceFormatError

#: Memory of a function without a memory row when the trace has no memory rows at all: the
#: median app memory of the Azure 2019 dataset is in the low hundreds of MB.
DEFAULT_MEMORY_MB = 128.0
#: Duration of a function without a durations row when no row at all is known.
DEFAULT_DURATION_MS = 1000.0

_KEY_COLUMNS = ("HashOwner", "HashApp", "HashFunction")
_MINUTE_RE = re.compile(r"^(?:minute_)?(\d+)$")
_INVOCATION_GLOBS = ("invocations*.csv", "*invocations_per_function*.csv")
_DURATION_GLOBS = ("durations*.csv", "*function_durations*.csv")
_MEMORY_GLOBS = ("memory*.csv", "*app_memory*.csv")


@dataclass(frozen=True)
class Trace:
    """Per-minute invocation counts of a set of functions (one function = one model).

    Attributes:
        minutes: ``(T,)`` int64 trace minute of each column (e.g. 480..959; day 1 is 1..1440).
        names: ``N`` unique function names (``HashFunction``, prefixed with the app hash only
            when two apps share a function hash).
        counts: ``(N, T)`` int64 invocations per function per minute.
        memory_mb: ``(N,)`` float64 average allocated memory (stands for the model size).
        duration_ms: ``(N,)`` float64 average execution time.
        defaulted_memory: names whose memory was defaulted (no memory row).
        defaulted_duration: names whose duration was defaulted (no durations row).
        source: where the trace was read from.
    """

    minutes: np.ndarray
    names: list[str]
    counts: np.ndarray
    memory_mb: np.ndarray
    duration_ms: np.ndarray
    defaulted_memory: list[str] = field(default_factory=list)
    defaulted_duration: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def n_models(self) -> int:
        return len(self.names)

    @property
    def n_minutes(self) -> int:
        return int(self.minutes.shape[0])

    def memory_bytes(self) -> np.ndarray:
        """Model sizes in bytes (memory MB × 2**20), int64."""
        return (self.memory_mb * 2**20).astype(np.int64)

    def select(self, rows: np.ndarray | list[int] | slice | None = None,
               cols: slice | None = None) -> "Trace":
        """Return a sub-trace of some functions (``rows``) and/or a window of minutes (``cols``)."""
        r = slice(None) if rows is None else rows
        c = slice(None) if cols is None else cols
        idx = np.arange(self.n_models)[r]
        names = [self.names[i] for i in idx]
        keep = set(names)
        return Trace(
            minutes=self.minutes[c],
            names=names,
            counts=self.counts[idx][:, c],
            memory_mb=self.memory_mb[idx],
            duration_ms=self.duration_ms[idx],
            defaulted_memory=[n for n in self.defaulted_memory if n in keep],
            defaulted_duration=[n for n in self.defaulted_duration if n in keep],
            source=self.source,
        )


def load_trace(path: str | Path) -> Trace:
    """Load an Azure Functions 2019 trace.

    Args:
        path: a directory holding one invocations file (``invocations.csv`` or the dataset's
            ``invocations_per_function_md.anon.dNN.csv``) and optionally one durations and one
            memory file, or the invocations CSV itself (its siblings are then looked up in the
            same directory with the same day suffix when there is one).

    Returns:
        The :class:`Trace`, functions in the order of the invocations file.

    Raises:
        TraceFormatError: a file is missing, ambiguous, or lacks a required column or has a
            malformed value; the message names the file, the column and the fix.
    """
    inv_path, dur_path, mem_path = _find_files(Path(path))
    key_cols, keys, minutes, counts = _read_invocations(inv_path)
    names = _unique_names(keys, key_cols)
    duration_ms, no_dur = _join_column(dur_path, key_cols, keys, "Average", DEFAULT_DURATION_MS)
    memory_mb, no_mem = _join_column(mem_path, key_cols, keys, "AverageAllocatedMb",
                                     DEFAULT_MEMORY_MB)
    return Trace(
        minutes=minutes,
        names=names,
        counts=counts,
        memory_mb=memory_mb,
        duration_ms=duration_ms,
        defaulted_memory=[names[i] for i in no_mem],
        defaulted_duration=[names[i] for i in no_dur],
        source=str(path),
    )


def _find_files(path: Path) -> tuple[Path, Path | None, Path | None]:
    if not path.exists():
        raise TraceFormatError(
            f"trace path {path} does not exist: pass a directory with invocations.csv "
            "(and durations.csv, memory.csv) or the invocations CSV itself"
        )
    if path.is_file():
        directory, inv = path.parent, path
        day = re.search(r"\.d\d\d\.csv$", path.name)
        suffix = day.group(0) if day else ".csv"
        dur = _pick(directory, [g.replace(".csv", suffix) for g in _DURATION_GLOBS], "durations",
                    required=False)
        mem = _pick(directory, [g.replace(".csv", suffix) for g in _MEMORY_GLOBS], "memory",
                    required=False)
        return inv, dur, mem
    inv = _pick(path, _INVOCATION_GLOBS, "invocations", required=True)
    if inv is None:  # _pick raises when a required file is missing; this keeps the type exact
        raise TraceFormatError(f"no invocations CSV in {path}")
    return inv, _pick(path, _DURATION_GLOBS, "durations", False), _pick(
        path, _MEMORY_GLOBS, "memory", False)


def _pick(directory: Path, globs: tuple[str, ...] | list[str], what: str,
          required: bool) -> Path | None:
    found = sorted({p for g in globs for p in directory.glob(g)})
    if len(found) > 1:
        raise TraceFormatError(
            f"{directory} holds several {what} files ({', '.join(p.name for p in found)}): "
            "pass the invocations CSV of one day instead of the directory"
        )
    if not found:
        if required:
            raise TraceFormatError(
                f"{directory} has no {what} file: expected one of {', '.join(globs)}"
            )
        return None
    return found[0]


def _read_header(path: Path) -> tuple[list[str], csv.reader, object]:
    handle = open(path, newline="")
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        handle.close()
        raise TraceFormatError(f"{path} is empty: expected a CSV header row") from None
    return [h.strip() for h in header], reader, handle


def _read_invocations(path: Path) -> tuple[list[str], list[tuple[str, ...]], np.ndarray, np.ndarray]:
    header, reader, handle = _read_header(path)
    with handle:  # type: ignore[attr-defined]
        if "HashFunction" not in header:
            raise TraceFormatError(
                f"{path}: no HashFunction column in the header; an invocations file needs "
                "HashFunction and per-minute columns (1..1440 or minute_1..minute_1440)"
            )
        key_cols = [c for c in _KEY_COLUMNS if c in header]
        key_idx = [header.index(c) for c in key_cols]
        minute_idx, minutes = [], []
        for i, col in enumerate(header):
            m = _MINUTE_RE.match(col)
            if m:
                minute_idx.append(i)
                minutes.append(int(m.group(1)))
        if not minutes:
            raise TraceFormatError(
                f"{path}: no per-minute columns; name them by minute (1..1440, or a window "
                "such as 480..959) or minute_1..minute_1440"
            )
        order = np.argsort(minutes, kind="stable")
        minutes_arr = np.asarray(minutes, dtype=np.int64)[order]
        if np.any(np.diff(minutes_arr) != 1):
            raise TraceFormatError(
                f"{path}: minute columns {minutes_arr[0]}..{minutes_arr[-1]} are not "
                "consecutive or repeat; give one column per minute without gaps"
            )
        keys: list[tuple[str, ...]] = []
        rows: list[list[str]] = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise TraceFormatError(
                    f"{path}, line {line_no}: {len(row)} fields but the header has "
                    f"{len(header)}; fix or drop the truncated row"
                )
            keys.append(tuple(row[i] for i in key_idx))
            rows.append([row[i] for i in minute_idx])
    if not rows:
        raise TraceFormatError(f"{path}: no function rows under the header")
    try:
        raw = np.asarray(rows, dtype=np.float64)
    except ValueError:
        raw = None
    if raw is None or not np.all(np.isfinite(raw)) or np.any(raw < 0) or np.any(raw != np.floor(raw)):
        bad_row, bad_col = _first_bad_cell(rows)
        raise TraceFormatError(
            f"{path}, line {bad_row + 2}, column {header[minute_idx[bad_col]]}: "
            f"{rows[bad_row][bad_col]!r} is not a non-negative whole number of invocations; "
            "fix the cell (empty minutes are 0)"
        )
    counts = raw.astype(np.int64)[:, order]
    keys, counts = _merge_duplicates(keys, counts)
    return key_cols, keys, minutes_arr, counts


def _first_bad_cell(rows: list[list[str]]) -> tuple[int, int]:
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            try:
                v = float(cell)
            except ValueError:
                return r, c
            if not np.isfinite(v) or v < 0 or v != int(v):
                return r, c
    return 0, 0


def _merge_duplicates(keys: list[tuple[str, ...]], counts: np.ndarray
                      ) -> tuple[list[tuple[str, ...]], np.ndarray]:
    # The dataset splits a function's invocations by trigger on rare occasions; the model
    # sees the sum of its requests, whatever triggered them.
    index: dict[tuple[str, ...], int] = {}
    for k in keys:
        index.setdefault(k, len(index))
    if len(index) == len(keys):
        return keys, counts
    merged = np.zeros((len(index), counts.shape[1]), dtype=np.int64)
    np.add.at(merged, [index[k] for k in keys], counts)
    return list(index), merged


def _unique_names(keys: list[tuple[str, ...]], key_cols: list[str]) -> list[str]:
    f = key_cols.index("HashFunction")
    short = [k[f] for k in keys]
    if len(set(short)) == len(short):
        return short
    # Two apps with the same function hash: qualify those names with the app hash.
    seen: dict[str, int] = {}
    for s in short:
        seen[s] = seen.get(s, 0) + 1
    return [
        "/".join(k[:f] + (k[f],)) if seen[k[f]] > 1 else k[f]
        for k in keys
    ]


def _join_column(path: Path | None, key_cols: list[str], keys: list[tuple[str, ...]],
                 column: str, fallback: float) -> tuple[np.ndarray, list[int]]:
    """Per invocation key, the value of ``column`` in ``path`` joined on the shared keys."""
    values = np.full(len(keys), np.nan)
    if path is not None:
        header, reader, handle = _read_header(path)
        with handle:  # type: ignore[attr-defined]
            shared = [c for c in key_cols if c in header]
            if not shared:
                raise TraceFormatError(
                    f"{path}: none of the key columns {', '.join(key_cols)} is in the header; "
                    "add HashFunction (or HashOwner,HashApp for per-app rows)"
                )
            if column not in header:
                raise TraceFormatError(
                    f"{path}: no {column} column in the header; it is the value read from "
                    "this file, add it or leave the file out to use defaults"
                )
            col = header.index(column)
            sidx = [header.index(c) for c in shared]
            table: dict[tuple[str, ...], float] = {}
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise TraceFormatError(
                        f"{path}, line {line_no}: {len(row)} fields but the header has "
                        f"{len(header)}; fix or drop the truncated row"
                    )
                try:
                    v = float(row[col])
                except ValueError:
                    raise TraceFormatError(
                        f"{path}, line {line_no}, column {column}: {row[col]!r} is not a "
                        "number; fix the cell or drop the row to use the default"
                    ) from None
                if np.isfinite(v) and v >= 0:
                    table[tuple(row[i] for i in sidx)] = v
            kidx = [key_cols.index(c) for c in shared]
            for i, k in enumerate(keys):
                values[i] = table.get(tuple(k[j] for j in kidx), np.nan)
    missing = np.flatnonzero(np.isnan(values))
    known = values[~np.isnan(values)]
    values[missing] = float(np.median(known)) if known.size else fallback
    return values, [int(i) for i in missing]
