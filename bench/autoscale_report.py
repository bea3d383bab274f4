"""``warmstart bench autoscale``'s table and picture (the demo draws the same picture)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from warmstart.bench.autoscale import modes_of
from warmstart.bench.report import MISSING, format_ratio, format_target, make_table

TIER_LEVEL = {"REMOTE": 0, "DISK": 1, "HOST": 2, "DEVICE": 3, "HOT": 4}


def _ms(value: float | None) -> str:
    return MISSING if value is None else f"{value:.0f} ms"


def autoscale_tables(result: dict[str, Any]) -> list[Any]:
    rows = []
    modes = modes_of(result)
    for mode, r in modes.items():
        s = r["surge"]
        rows.append([mode, str(r["requests"]), str(r["failed"]), str(r["lost"]), str(r["cold_waits"]),
                     _ms(r["p50_ms"]), _ms(r["p99_ms"]), str(s["cold_waits"]), _ms(s["p99_ms"]),
                     f"{r['worker_minutes']:.2f}"])  # fmt: skip
    c = result["config"]
    title = (f"autoscale: {c['requests']} requests, night {c['night_rate_per_s']:g}/s, surge "
             f"{c['surge_rate_per_s']:g}/s for {c['surge_min']} of {c['night_min'] + c['surge_min'] + c['after_min']} "
             f"traffic minutes ({c['minute_s']:g} s each), {c['min_workers']}..{c['max_workers']} workers")  # fmt: skip
    table = make_table(title, ["mode", "requests", "failed", "lost", "cold waits", "p50", "p99",
                               "surge cold waits", "surge p99", "worker min"], rows)  # fmt: skip
    ratios = []
    if "predictive" in modes and "reactive" in modes:
        p, r = modes["predictive"], modes["reactive"]
        ratios.append(["cold waits, predictive / reactive", _ratio(p["cold_waits"], r["cold_waits"]), "≤ 0.20",
                       format_target(result["verdicts"].get("cold_waits_le_fifth_of_reactive"))])  # fmt: skip
        ratios.append(["surge p99, predictive / reactive", _ratio(p["surge"]["p99_ms"], r["surge"]["p99_ms"]), "≤ 0.33",
                       format_target(result["verdicts"].get("surge_p99_le_third_of_reactive"))])  # fmt: skip
    if "predictive" in modes and "fixed" in modes:
        ratios.append(["worker minutes, predictive / fixed",
                       _ratio(modes["predictive"]["worker_minutes"], modes["fixed"]["worker_minutes"]), "≤ 0.60",
                       format_target(result["verdicts"].get("worker_minutes_le_0.6_of_fixed"))])  # fmt: skip
    ratios.append(["lost, every mode", "", "= 0", format_target(result["verdicts"].get("lost_0_everywhere"))])
    return [table, make_table("targets (same traffic, same run)", ["ratio", "value", "target", ""], ratios)]


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return MISSING
    return format_ratio(a / b)


def plot_autoscale(result: dict[str, Any], path: Path) -> Path:
    """Per mode: live workers and the scaler's target over time (the surge shaded), and per
    model how many workers held it HOT, with each cold wait marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result["config"]
    surge = (c["night_min"] * c["minute_s"], (c["night_min"] + c["surge_min"]) * c["minute_s"])
    timelines = result["timelines"]
    models = sorted({r["model"] for t in timelines.values() for r in t["requests"]})
    fig, axes = plt.subplots(len(timelines), 2, figsize=(13, 2.6 * len(timelines) + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2]}, sharex=True)  # fmt: skip
    for row, (mode, timeline) in zip(axes, timelines.items()):
        samples = timeline["samples"]
        times = [s["t_s"] for s in samples]
        left, right = row
        left.step(times, [len(s["tiers"]) for s in samples], where="post", label="live workers")
        left.step(times, [s["target"] for s in samples], where="post", linestyle="--", label="scaler target")
        left.axvspan(*surge, color="#fdd0a2", alpha=0.5, label="surge")
        left.set_ylabel(mode)
        left.set_ylim(0, c["max_workers"] + 0.5)
        left.legend(loc="upper left", fontsize=7)
        grid = [[sum(1 for tiers in s["tiers"].values() if tiers.get(m) == "HOT") for s in samples] for m in models]
        if times:
            right.imshow(grid, aspect="auto", cmap="Oranges", vmin=0, vmax=c["max_workers"], interpolation="nearest",
                         extent=(times[0], times[-1], len(models) - 0.5, -0.5))  # fmt: skip
        colds = [r for r in timeline["requests"] if r["cold"]]
        right.scatter([r["sent_s"] for r in colds], [models.index(r["model"]) for r in colds], marker="x",
                      color="black", s=12, label=f"cold wait ({len(colds)})")  # fmt: skip
        right.set_yticks(range(len(models)), models)
        right.set_title(f"{mode}: workers holding each model HOT (darker: more)", fontsize=9)
        right.legend(loc="upper left", fontsize=7)
    axes[-1][0].set_xlabel(f"seconds into the replay (one traffic minute = {c['minute_s']:g} s)")
    axes[-1][1].set_xlabel("seconds into the replay")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
