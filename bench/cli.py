"""``warmstart bench …``: benchmarks that print tables and write JSON."""

from __future__ import annotations

import click


@click.group()
def bench() -> None:
    """Benchmarks: each prints a table and writes JSON; baselines run side by side."""
