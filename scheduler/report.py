"""Rich tables for the simulator's and the advisor's results."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_simulation(result: dict[str, Any], console: Console | None = None) -> None:
    """Print :func:`warmstart.scheduler.simulator.simulate` output as a table, one row per policy.

    Args:
        result: the dict ``simulate`` returned.
        console: where to print (a new stdout console when None).
    """
    console = console or Console()
    info = result.get("trace", {})
    learned = info.get("learn_minutes", 0)
    minutes = info.get("minutes", "?")
    window = (f"the last {minutes - learned} of {minutes} minutes (after {learned} learning ones)"
              if learned and isinstance(minutes, int) else f"{minutes} minutes")
    table = Table(title=(f"{info.get('models', '?')} models × {window}, "
                         f"budget {result.get('budget_bytes', 0) / 2**30:.1f} GiB"))
    for col in ("policy", "cold %", "Q3 cold %", "waste % (fixed-10=100)", "host waste %",
                "memory USD", "cold s (budget)", "cold % (budget)", "replay s"):
        table.add_column(col, justify="left" if col == "policy" else "right",
                         no_wrap=col == "policy")
    rows = {**result.get("policies", {}), **result.get("sweep", {})}
    for name, m in rows.items():
        table.add_row(
            name,
            f"{m['overall_cold_pct']:.2f}",
            f"{m['q3_cold_pct']:.2f}",
            f"{m['waste_pct']:.1f}",
            f"{m['host_waste_pct']:.1f}",
            f"{m.get('memory_cost_usd', 0.0):.2f}",
            f"{m['cold_seconds']:.0f}",
            f"{m['budget_cold_pct']:.2f}",
            f"{m['replay_s']:.1f}",
            style="bold" if name in result.get("policies", {}) else None,
        )
    console.print(table)


def print_headroom(result: dict[str, Any], console: Console | None = None) -> None:
    """Print :func:`warmstart.scheduler.headroom.measure_headroom` output, one table per
    policy: its replay, then its rule with hindsight of each model's first idle time, then
    of all its idle times."""
    console = console or Console()
    for entry in result.get("policies", []):
        table = Table(title=(f"headroom of {entry['policy']}: the same rule with hindsight, the whole trace "
                             f"from nothing (first-arrival floor {result['first_arrival_floor_pct']:.2f} %)"))
        for col in ("knowledge", "cold %", "Q3 cold %", "HOT waste % (fixed-10=100)", "cold starts"):
            table.add_column(col, justify="left" if col == "knowledge" else "right", no_wrap=True)
        for name, m in entry["rows"].items():
            label = "learned online (the policy)" if name == entry["policy"] else name
            table.add_row(label, f"{m['overall_cold_pct']:.2f}", f"{m['q3_cold_pct']:.2f}",
                          f"{m['waste_pct']:.1f}", f"{m['cold_starts']}")
        console.print(table)


def print_advice(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """Print :func:`warmstart.scheduler.advisor.advise` output as a table, one row per model.

    Args:
        rows: the list ``advise`` returned.
        console: where to print (a new stdout console when None).
    """
    console = console or Console()
    table = Table(title="warm-up advice")
    for col in ("model", "size MiB", "arrivals/day", "policy", "cold starts/day",
                "cold s/day", "USD/day", "mode", "tier"):
        table.add_column(col, justify="left" if col in ("model", "policy", "mode", "tier")
                         else "right")
    for row in rows:
        for i, (policy, p) in enumerate(row["policies"].items()):
            table.add_row(
                row["model"][:16] if i == 0 else "",
                f"{row['size_bytes'] / 2**20:.0f}" if i == 0 else "",
                f"{row['arrivals_per_day']:.0f}" if i == 0 else "",
                policy,
                f"{p['cold_starts_per_day']:.1f}",
                f"{p['cold_seconds_per_day']:.1f}",
                f"{p['memory_usd_per_day']:.4f}",
                row["recommendation"]["mode"] if i == 0 else "",
                row["recommendation"]["tier"] if i == 0 else "",
            )
    console.print(table)
