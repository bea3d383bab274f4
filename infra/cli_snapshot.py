"""CLI commands for snapshots: publish, ls, inspect, fetch (filled in by the snapshot work)."""

from __future__ import annotations

import click

snapshot_commands: list[click.Command] = []
