"""The hybrid histogram policy of Shahrad et al., "Serverless in the Wild" (USENIX ATC 2020).

Per model, a histogram of idle times (time between two invocations) in 240 one-minute bins
(4 hours). After each invocation:

1. If most idle times fell out of the histogram's range, predict the next idle time from the
   recent ones (the paper fits ARIMA; we use the median of the latest ``RECENT_IDLE_KEEP``
   idle times, a robust one-step forecast for the near-constant long gaps this case is
   about) and load the model from 85% of the prediction until 115% of it (the paper's 15%
   margins for that case).
2. Else, if the histogram is not representative — no idle time yet, or the coefficient of
   variation of the bin counts below 2 (idle times spread over many bins) — fall back to the
   standard keep-alive with the histogram's range: stay loaded 240 minutes, no pre-warm.
3. Else take the 5th percentile (head) and 99th percentile (tail) of the idle times. The
   pre-warm window is the head less 10%, the keep-alive ends at the tail plus 10%, both
   measured from the last invocation: the model is unloaded after the invocation, loaded
   again at the pre-warm point, and unloaded at the end of the keep-alive. A pre-warm window
   of 0 means the model stays loaded after the invocation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from warmstart.scheduler.policies.base import (
    IDLE_BINS,
    Decision,
    ModelContext,
    Policy,
    Tier,
    TrafficState,
    empirical_hazard,
)

HEAD_PERCENTILE = 5.0
TAIL_PERCENTILE = 99.0
MARGIN = 0.10
CV_THRESHOLD = 2.0
OOB_MARGIN = 0.15


def histogram_windows(state: TrafficState) -> dict[str, Any]:
    """The hybrid policy's windows for the idle period after the latest invocation.

    Args:
        state: the model's traffic state.

    Returns:
        ``{"prewarm_min", "keepalive_min", "mode"}``: the model is loaded while the minutes
        since the last invocation are in ``[max(prewarm_min, 1), keepalive_min]``; ``mode`` is
        ``"histogram"``, ``"fallback"`` (standard keep-alive) or ``"oob"`` (forecast).
    """
    in_range = sum(state.idle_hist)
    total = in_range + state.idle_oob
    if total and state.idle_oob > in_range:
        predicted = float(np.median(state.recent_idle_min))
        return {
            "prewarm_min": int(math.floor(predicted * (1 - OOB_MARGIN))),
            "keepalive_min": int(math.ceil(predicted * (1 + OOB_MARGIN))),
            "mode": "oob",
            "predicted_idle_min": predicted,
        }
    counts = np.asarray(state.idle_hist, dtype=np.float64)
    if in_range == 0 or counts.std() / counts.mean() < CV_THRESHOLD:
        return {"prewarm_min": 0, "keepalive_min": IDLE_BINS, "mode": "fallback"}
    cum = np.cumsum(counts)
    head = int(np.searchsorted(cum, HEAD_PERCENTILE / 100 * in_range))
    tail = int(np.searchsorted(cum, TAIL_PERCENTILE / 100 * in_range))
    return {
        "prewarm_min": int(math.floor(head * (1 - MARGIN))),
        "keepalive_min": int(math.ceil(tail * (1 + MARGIN))),
        "mode": "histogram",
        "predicted_idle_min": float(head),
    }


class HybridHistogram(Policy):
    """Shahrad et al.'s hybrid histogram policy (see the module docstring)."""

    name = "hybrid"

    def replan(self, context: ModelContext, state: TrafficState, now_min: int) -> dict[str, Any]:
        return histogram_windows(state)

    def decide(self, context: ModelContext, state: TrafficState, now_min: int) -> Decision:
        if state.last_arrival_min is None:
            return Decision(Tier.DISK, 0.0, None, "never-seen")
        plan = state.plan or histogram_windows(state)
        idle_min = now_min + 1 - state.last_arrival_min
        predicted = plan.get("predicted_idle_min")
        next_min = None if predicted is None else state.last_arrival_min + predicted
        if max(plan["prewarm_min"], 1) <= idle_min <= plan["keepalive_min"]:
            return Decision(Tier.HOT, empirical_hazard(state, idle_min), next_min, plan["mode"])
        return Decision(Tier.DISK, 0.0, next_min, plan["mode"] + "-unloaded")
