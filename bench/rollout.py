"""``warmstart bench rollout``, the pure half: what is counted per phase, the targets, the table.

Each request the benchmark sends is one record: ``{"phase", "version", "ok", "lost", "cold",
"latency_ms", "error"}`` — ``cold`` when no worker had the model HOT just before it was sent
(it would wait for a restore), ``lost`` when no answer came within the client's timeout,
``ok`` false for any other error answer. The phases run one after the other under the same
steady load: ``warmup`` (not judged), ``good``, ``bad``, ``slow``, ``drain``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PHASES = ("good", "bad", "slow", "drain")


def summarise_phase(records: list[dict[str, Any]], phase: str, new_version: str | None = None) -> dict[str, Any]:
    """Counts of one phase's requests; with ``new_version``, the share it answered."""
    mine = [r for r in records if r["phase"] == phase]
    answered = [r for r in mine if r["ok"]]
    out: dict[str, Any] = {
        "requests": len(mine),
        "failed": sum(1 for r in mine if not r["ok"] and not r["lost"]),
        "lost": sum(1 for r in mine if r["lost"]),
        "cold_waits": sum(1 for r in mine if r["cold"]),
        "p50_ms": _percentile([r["latency_ms"] for r in answered], 50),
        "p99_ms": _percentile([r["latency_ms"] for r in answered], 99),
    }
    if new_version is not None:
        by_new = sum(1 for r in answered if r["version"] == new_version)
        out["served_by_new"] = by_new
        out["served_by_new_share"] = by_new / len(answered) if answered else 0.0
    return out


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets, each true or false."""
    phases = [result[p] for p in PHASES if p in result]
    out = {
        "failed_0_every_phase": all(p["failed"] == 0 for p in phases),
        "lost_0_every_phase": all(p["lost"] == 0 for p in phases),
        "cold_waits_0_every_phase": all(p["cold_waits"] == 0 for p in phases),
    }
    if "good" in result:
        out["good_promoted"] = bool(result["good"].get("promoted"))
        asked = result.get("config", {}).get("canary_share")
        observed = (result["good"].get("canary") or {}).get("observed_share")
        if asked:
            out["canary_share_within_5_points"] = observed is not None and abs(observed - asked) <= 0.05
    if "bad" in result:
        out["bad_rolled_back_before_serving"] = bool(result["bad"].get("rolled_back")) and result["bad"].get("served_by_bad") == 0
    if "slow" in result:
        out["slow_rolled_back"] = bool(result["slow"].get("rolled_back"))
    return out


def rollout_tables(result: dict[str, Any]) -> list[Any]:
    from warmstart.bench.report import format_target, make_table

    rows = []
    for phase in PHASES:
        p = result.get(phase)
        if p is None:
            continue
        share = (p.get("canary") or {}).get("observed_share")
        canary = f", canary {share:.1%}" if share is not None else ""
        outcome = {
            "good": f"promoted in {p.get('seconds_to_promote', 0):.1f} s{canary}" if p.get("promoted") else "NOT promoted",
            "bad": ("rolled back" if p.get("rolled_back") else "NOT rolled back") + f", served {p.get('served_by_bad')}",
            "slow": "rolled back" if p.get("rolled_back") else "NOT rolled back",
            "drain": f"worker stopped in {p.get('seconds_to_stop', 0):.1f} s",
        }[phase]
        rows.append([phase, str(p["requests"]), str(p["failed"]), str(p["lost"]), str(p["cold_waits"]),
                     f"{p['p99_ms']:.1f}" if p["p99_ms"] is not None else "—", outcome, p.get("reason") or ""])  # fmt: skip
    cfg = result.get("config", {})
    phases = make_table(
        "Rollout phases under steady load",
        ["phase", "requests", "failed", "lost", "cold waits", "p99 ms", "outcome", "why"],
        rows,
        caption=f"{cfg.get('rate_per_s')} req/s on one model ({cfg.get('model_bytes', 0) / 2**20:.1f} MiB), "
        f"{cfg.get('workers')} workers and a beat; a request is a cold wait when no worker had the model "
        "HOT just before it was sent",
    )
    targets = make_table("Targets", ["target", "verdict"],
                         [[k, format_target(v)] for k, v in result.get("verdicts", {}).items()])  # fmt: skip
    return [phases, targets]


def plot_rollout(result: dict[str, Any], path: Path) -> Path:
    """Answers per second by the version that gave them, over the run, with each phase shaded
    and labelled with its outcome; failed or lost answers and cold waits marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = result["timeline"]
    requests = timeline["requests"]
    start = min((r["sent_s"] for r in requests), default=0.0)
    end = max((r["sent_s"] for r in requests), default=start) + 1.0
    seconds = list(range(int(start), int(end) + 1))
    versions = sorted({r["version"] for r in requests if r["ok"]})
    fig, ax = plt.subplots(figsize=(11, 3.8))
    bottom = [0] * len(seconds)
    for version in versions:
        counts = [sum(1 for r in requests if r["ok"] and r["version"] == version and int(r["sent_s"]) == t) for t in seconds]
        ax.bar(seconds, counts, bottom=bottom, width=1.0, align="edge", alpha=0.85, label=f"answered by {version}")
        bottom = [b + c for b, c in zip(bottom, counts)]
    top = max(bottom or [1]) * 1.35
    bad = [r for r in requests if not r["ok"] or r["cold"]]
    if bad:
        ax.scatter([r["sent_s"] for r in bad], [0.5] * len(bad), marker="x", color="red", label="failed, lost or cold")
    for span in timeline["spans"]:
        ax.axvline(span["start_s"], color="black", linestyle="--", linewidth=0.8)
        label = f"{span['phase']}" + (f" ({span['version']})" if span.get("version") else "") + f":\n{span.get('outcome', '')}"
        ax.text(span["start_s"] + 0.1, top * 0.97, label, fontsize=8, va="top")
    ax.set_ylim(0, top)
    ax.set_xlim(start, end)
    ax.set_xlabel("seconds")
    ax.set_ylabel("answers per second")
    ax.set_title("Rollouts under steady load: which version answered (the NaN version never does)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]
