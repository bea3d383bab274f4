"""``warmstart bench replay``: how long the simulator takes to replay a day of a fleet.

The trace is the given one tiled to ``functions`` × ``minutes`` (rows repeated with new
names, the day made of the trace's minutes one after another): the Azure 2019 sample holds
500 functions × 480 minutes, the target is 1,000 × 1,440 (a full day of a thousand models)
under ``warmstart`` in at most 20 s. Each policy's replay (:func:`warmstart.scheduler.simulator.replay`,
the policies' own ``step`` minute by minute) is timed alone, side by side with the references;
the metrics (cold starts, budget cut) are not part of the time. Wall and CPU time are both
reported: on a shared machine the CPU time is the steadier of the two.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from warmstart.bench.report import environment, format_seconds, format_target, make_table
from warmstart.scheduler.simulator import replay
from warmstart.scheduler.traces import Trace, load_trace

TARGET_REPLAY_S = 20.0
POLICIES = ("warmstart", "hybrid", "fixed-10")


@dataclass(frozen=True)
class ReplayBenchConfig:
    trace_dir: Path
    functions: int = 1000
    minutes: int = 1440


def tiled(trace: Trace, functions: int, minutes: int) -> Trace:
    """``trace`` repeated to ``functions`` rows and ``minutes`` columns."""
    rows = np.arange(functions) % trace.n_models
    cols = np.arange(minutes) % trace.n_minutes
    names = [f"{trace.names[r]}#{i // trace.n_models}" for i, r in enumerate(rows)]
    return Trace(minutes=np.arange(1, minutes + 1), names=names, counts=trace.counts[rows][:, cols],
                 memory_mb=trace.memory_mb[rows], duration_ms=trace.duration_ms[rows],
                 source=f"{trace.source} tiled to {functions}x{minutes}")


def run_replay_benchmark(cfg: ReplayBenchConfig, progress: Any = None) -> dict[str, Any]:
    trace = tiled(load_trace(cfg.trace_dir), cfg.functions, cfg.minutes)
    rows = []
    for name in POLICIES:
        if progress:
            progress(f"replaying {trace.n_models} × {trace.n_minutes} under {name} …")
        t0, c0 = time.perf_counter(), time.process_time()
        replay(trace, name)
        rows.append({"policy": name, "replay_s": time.perf_counter() - t0, "replay_cpu_s": time.process_time() - c0})
    main = rows[0]["replay_s"]
    return {
        "functions": trace.n_models,
        "minutes": trace.n_minutes,
        "model_minutes": trace.n_models * trace.n_minutes,
        "active_minutes": int((trace.counts > 0).sum()),
        "replay_s": main,
        "target_replay_s": TARGET_REPLAY_S,
        "replay_target_met": main <= TARGET_REPLAY_S,
        "policies": rows,
        "environment": environment(trace=str(cfg.trace_dir)),
    }


def replay_tables(result: dict[str, Any]) -> list[Any]:
    rows = [[r["policy"], format_seconds(r["replay_s"]), format_seconds(r.get("replay_cpu_s")),
             f"{r['replay_s'] / result['model_minutes'] * 1e6:.2f} µs"] for r in result["policies"]]
    rows.append(["target (warmstart)", f"≤ {format_seconds(result['target_replay_s'])}", "",
                 format_target(result["replay_target_met"])])
    return [make_table(f"simulator replay: {result['functions']} functions × {result['minutes']} minutes "
                       f"({result['active_minutes']} minutes with arrivals)",
                       ["policy", "replay (wall)", "CPU time", "per model-minute"], rows,
                       caption=f"load average {result['environment'].get('load_average_1m') or 0:.2f}: "
                               "other work on the machine inflates the wall time")]
