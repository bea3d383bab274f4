"""The cold-start vs waste plane of a simulation (matplotlib, imported lazily)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def _curve(rows: dict[str, dict[str, Any]], pattern: str) -> list[tuple[float, float, str]]:
    pts = []
    for name, m in rows.items():
        match = re.fullmatch(pattern, name)
        if match:
            pts.append((float(match.group(1)), m["waste_pct"], m["overall_cold_pct"], name))
    pts.sort()
    return [(w, c, n) for _, w, c, n in pts]


def plot_tradeoff(result: dict[str, Any], path: str | Path) -> Path:
    """Draw each policy as a point on (waste %, cold %), with the fixed-N and warmstart-B
    curves when the result has them (``simulate(..., sweep=True)``).

    Args:
        result: :func:`warmstart.scheduler.simulator.simulate` output.
        path: image file to write (PNG, SVG or PDF by suffix).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {**result.get("sweep", {}), **result.get("policies", {})}
    fig, ax = plt.subplots(figsize=(7, 5))
    fixed = _curve(rows, r"fixed-(\d+)")
    warm = _curve({**rows, **({"warmstart-240": rows["warmstart"]} if "warmstart" in rows
                             else {})}, r"warmstart-(\d+(?:\.\d+)?)")
    for pts, style, label in ((fixed, "o--", "fixed-N keep-alive"),
                              (warm, "s-", "warmstart-B (break-even B min)")):
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, alpha=0.6, label=label)
            for w, c, n in pts:
                ax.annotate(n.split("-")[1], (w, c), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    for name, m in result.get("policies", {}).items():
        ax.scatter([m["waste_pct"]], [m["overall_cold_pct"]], s=60, zorder=3, label=name)
    ax.set_xlabel("wasted memory-time (fixed-10 = 100)")
    ax.set_ylabel("cold starts (% of minutes with requests)")
    ax.set_title("cold starts vs waste")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(path)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
