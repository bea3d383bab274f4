"""Shared output helpers for every benchmark: ratios, units, the rich table and the JSON file.

A benchmark builds one plain JSON tree (numbers in base units: seconds, bytes, bytes/s) and
hands it to these helpers; nothing here measures anything. Formatting never rounds the JSON,
only the table.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

MISSING = "—"


def median(values: Iterable[float]) -> float:
    """The median of a non-empty sequence of numbers (the value a benchmark reports).

    Raises:
        ValueError: ``values`` is empty.
    """
    items = list(values)
    if not items:
        raise ValueError("median of no samples: run at least one repeat")
    return float(statistics.median(items))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None where either is missing or the denominator is not
    a positive finite number (a ratio that cannot be computed is reported, not invented)."""
    if numerator is None or denominator is None:
        return None
    if not math.isfinite(numerator) or not math.isfinite(denominator) or denominator <= 0:
        return None
    return numerator / denominator


def format_seconds(seconds: float | None) -> str:
    """``0.0123`` -> ``12.3 ms``; microseconds, milliseconds or seconds as fits."""
    if seconds is None or not math.isfinite(seconds):
        return MISSING
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def format_ratio(value: float | None) -> str:
    """``54.21`` -> ``54.2×``; small ratios keep two decimals."""
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{value:.2f}×" if value < 10 else f"{value:.1f}×"


def format_bytes(size_bytes: float | None) -> str:
    """Binary units: ``268435456`` -> ``256.0 MiB``."""
    if size_bytes is None or not math.isfinite(size_bytes):
        return MISSING
    value = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - loop always returns


def format_throughput(bytes_per_s: float | None) -> str:
    """``1.2e9`` -> ``1.12 GiB/s``."""
    if bytes_per_s is None or not math.isfinite(bytes_per_s):
        return MISSING
    return format_bytes(bytes_per_s) + "/s"


def format_target(met: bool | None) -> str:
    """A target's verdict for a table cell."""
    if met is None:
        return MISSING
    return "[green]met[/green]" if met else "[red]missed[/red]"


def environment(**extra: Any) -> dict[str, Any]:
    """What a reader needs to compare two runs: versions, CPUs, and the run's own knobs.

    Args:
        **extra: benchmark-specific entries (repeat counts, sizes), added as given.
    """
    import torch  # imported here: report helpers must not make `--help` slow

    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable_cpus = os.cpu_count() or 0
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count() or 0,
        "usable_cpus": usable_cpus,
        "platform": platform.platform(),
        "machine": platform.machine(),
        # Other work on the machine skews timings; the 1-minute load says how much there was.
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    env.update(extra)
    return env


def make_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    caption: str | None = None,
) -> Table:
    """A rich table with the first column left-aligned and the others right-aligned."""
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    return table


def print_tables(tables: Iterable[Table], console: Console | None = None) -> None:
    """Print tables one after another (to stdout unless a console is given)."""
    # Off a terminal rich assumes 80 columns, too narrow for a benchmark table in a log file.
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    for table in tables:
        console.print(table)
        console.print()


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a benchmark's result atomically (temp file, then rename).

    Raises:
        ValueError: the data holds NaN or infinity, which JSON cannot represent; the benchmark
            must report a missing value as null instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def probe_main(name: str, run: Any, argv: list[str]) -> int:
    """The entry of a probe run in a fresh process, ``python -m warmstart.bench.<name>
    SPEC_JSON``: ``run(spec)``'s result as one JSON line on stdout, for the parent to parse.
    Libraries may print: stdout is stderr while it runs."""
    if len(argv) != 1:
        print(f"usage: python -m warmstart.bench.{name} SPEC_JSON", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        result = run(spec)
    finally:
        sys.stdout = real_stdout
    print(json.dumps(result, allow_nan=False), flush=True)
    return 0
