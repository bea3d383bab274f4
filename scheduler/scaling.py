"""The scaling signal, pure: how many workers the predicted demand needs, ahead of time.

``desired_workers`` is the larger of two counts, clamped to ``[floor, ceiling]``:

- **compute**: the peak, over the minutes from now until a worker started now would be
  ready (the lead time), of the predicted busy seconds per second (arrivals per second ×
  the model's measured seconds per request), divided by what one worker gives
  (``slots_per_worker × target_utilization``);
- **memory**: the models wanted HOT (or predicted to see a request in that window), packed
  first-fit decreasing into workers' device budgets.

The forecast for a minute is the larger of the recent rate (the mean of the last completed
minutes) and the mean of the same minute on earlier days (the recorded daily pattern), so
the signal rises *before* a surge that earlier days saw at this time, by the lead time. A
model the pattern expects within the lead window (:func:`expected_by_pattern`) is also
pre-warmed by the beat, so the workers that join for a surge join with its models HOT.

It falls only by hand-over (:func:`step_down`): the workers to remove are chosen (those
holding the fewest HOT models), and the signal drops only once every model HOT on them is
HOT on a worker that stays; until then it holds, and the chosen workers are reported as
draining so that the planner places their models elsewhere.

No Redis, Celery or clock here: the beat reads the inputs (``scheduler/observe.py``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from warmstart.infra.errors import SettingsError

DAY_MIN = 1440


@dataclass(frozen=True)
class ModelLoad:
    """One model's predicted demand.

    Attributes:
        model: its name.
        forecast: predicted arrivals in each minute from now (index 0: the current minute).
        service_s: seconds one request takes on a warm worker (measured).
        size_bytes: what it holds on a worker's device budget when HOT.
        hot: the policy wants it HOT (pre-warmed) whatever the forecast.
    """

    model: str
    forecast: Sequence[float]
    service_s: float
    size_bytes: int
    hot: bool = False


@dataclass(frozen=True)
class ScaleConfig:
    """Floor and ceiling (``WARMSTART_SCALE_MIN_WORKERS`` / ``_MAX_``), what one worker gives,
    and the lead time in minutes (how long a new worker takes to get its models HOT)."""

    min_workers: int
    max_workers: int
    slots_per_worker: int
    device_budget_bytes: int
    minute_s: float
    lead_min: int = 1
    target_utilization: float = 0.7

    def check(self) -> None:
        """Raises:
        SettingsError: a floor above the ceiling, or a non-positive capacity."""
        if self.min_workers < 0 or self.min_workers > self.max_workers:
            raise SettingsError(f"scaling floor {self.min_workers} is above the ceiling {self.max_workers} (or negative)")
        if self.slots_per_worker < 1 or self.device_budget_bytes <= 0 or self.minute_s <= 0:
            raise SettingsError("scaling needs slots_per_worker >= 1, a device budget and a minute length above 0")
        if not 0 < self.target_utilization <= 1:
            raise SettingsError(f"target_utilization {self.target_utilization} must be in (0, 1]")


@dataclass(frozen=True)
class ScaleDecision:
    workers: int
    compute_workers: int
    memory_workers: int
    peak_load: float
    peak_minute: int
    draining: list[str] = field(default_factory=list)
    held: bool = False  # the signal wanted to fall and waits for a hand-over


def daily_mean(history: Mapping[int, int], now_min: int, minutes: int, days: int = 7) -> list[float]:
    """The recorded daily pattern: for minutes ``now_min .. now_min + minutes - 1``, the mean
    count of the same minute on the earlier days that recorded anything that day (a day with
    no record is unknown, not zero).

    Args:
        history: counts of earlier days' minutes, by minute (``m - d × 1440``).
        days: how many earlier days to look back.
    """
    seen = [d for d in range(1, days + 1) if any(now_min - d * DAY_MIN <= m < now_min - d * DAY_MIN + DAY_MIN for m in history)]
    if not seen:
        return [0.0] * minutes
    return [sum(history.get(now_min + k - d * DAY_MIN, 0) for d in seen) / len(seen) for k in range(minutes)]


def forecast(recent: Mapping[int, int], history: Mapping[int, int], now_min: int, minutes: int,
             recent_min: int = 3, days: int = 7) -> list[float]:
    """Predicted arrivals for minutes ``now_min .. now_min + minutes - 1``: the larger of the
    recent rate and the daily pattern (:func:`daily_mean`).

    Args:
        recent: counts of the minutes before ``now_min`` (completed), by minute.
        history: counts of earlier days' minutes, by minute (``m - d × 1440``).
        recent_min: how many completed minutes make the recent rate.
        days: how many earlier days to average (only those with any recorded minute count).
    """
    rate = sum(recent.get(now_min - 1 - i, 0) for i in range(recent_min)) / recent_min if recent_min else 0.0
    return [max(rate, daily) for daily in daily_mean(history, now_min, minutes, days)]


def expected_by_pattern(daily: Sequence[float]) -> bool:
    """Whether the daily pattern expects at least one arrival over ``daily`` (the lead window):
    the model is then pre-warmed before it, as a worker joining for it is.

    One expected arrival is the natural line: below it, the earlier days more often saw none
    than one in that window, and a pre-warm would more often be waste than a saved cold start.
    """
    return sum(daily) >= 1.0


def desired_workers(loads: Sequence[ModelLoad], config: ScaleConfig) -> ScaleDecision:
    """Workers the predicted demand needs over the lead time (floor and ceiling applied).

    Raises:
        SettingsError: the configuration is inconsistent (see :meth:`ScaleConfig.check`).
    """
    config.check()
    window = max(1, config.lead_min + 1)
    peak_load, peak_minute = 0.0, 0
    for k in range(window):
        busy = sum((m.forecast[k] if k < len(m.forecast) else 0.0) * m.service_s / config.minute_s for m in loads)
        if busy > peak_load:
            peak_load, peak_minute = busy, k
    compute = math.ceil(peak_load / (config.slots_per_worker * config.target_utilization) - 1e-9)
    wanted = [m.size_bytes for m in loads if m.hot or any(m.forecast[k] > 0 for k in range(min(window, len(m.forecast))))]
    memory = _bins(wanted, config.device_budget_bytes)
    workers = min(config.max_workers, max(config.min_workers, compute, memory))
    return ScaleDecision(workers, compute, memory, peak_load, peak_minute)


def _bins(sizes: Sequence[int], capacity: int) -> int:
    """Workers needed to hold ``sizes`` HOT, first fit decreasing (a model larger than a
    budget takes a worker of its own: the planner reports it unplaced)."""
    free: list[int] = []
    for size in sorted(sizes, reverse=True):
        for i, room in enumerate(free):
            if size <= room:
                free[i] -= size
                break
        else:
            free.append(max(0, capacity - size))
    return len(free)


def step_down(decision: ScaleDecision, previous: int | None, hot: Mapping[str, Collection[str]],
              leaving: Collection[str] = (), chosen: Collection[str] = ()) -> ScaleDecision:
    """Let the signal fall below ``previous`` only once the workers to remove hand over.

    Args:
        decision: what :func:`desired_workers` says now.
        previous: the value published last (None: as many as there are live workers).
        hot: live workers -> the models each holds HOT.
        leaving: workers that asked to leave (``warmstart drain``): removed first.
        chosen: the workers chosen last time: chosen again before others (no flip-flop
            while their models move).

    Returns:
        ``decision`` when there are no more live workers than it wants. Otherwise the workers
        to remove (those leaving, then those chosen before, then those holding the fewest HOT
        models) are listed as
        ``draining``; while a model HOT on them is HOT on no worker that stays, the signal
        holds at ``previous`` (``held``), else it is ``decision``.
    """
    live = len(hot)
    if live <= decision.workers:
        return decision
    remove = sorted(hot, key=lambda w: (w not in leaving, w not in chosen, len(hot[w]), w))[: live - decision.workers]
    covered = {m for w in hot if w not in remove for m in hot[w]}
    pending = [w for w in remove if not set(hot[w]) <= covered]
    if not pending:
        return ScaleDecision(**{**decision.__dict__, "draining": remove})
    previous = live if previous is None else previous
    return ScaleDecision(**{**decision.__dict__, "workers": max(previous, decision.workers), "draining": remove,
                            "held": previous > decision.workers})  # fmt: skip
