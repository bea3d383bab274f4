"""``warmstart bench autoscale``, the pure half: the compressed day, the earlier days it was
recorded on, the queue-length scaler it is compared with, and the summary of each mode.

The day (the same for every mode, seeded): a quiet night on the two everyday models, then,
within one traffic minute, a surge of ``surge_factor`` times the night's rate that brings
the two large models in (a premiere), then quiet again. The earlier days recorded the same
shape (other seeds), so the recorded pattern has seen the surge at this time of day.

Modes (``bench/autoscale_run.py`` runs them):

* ``predictive``: the local scaler follows the beat's ``desired_workers``; workers and beat
  run the hot ``prod`` profile (eager models, pre-warms by the policy and the pattern).
* ``reactive``: a queue-length scaler in the manner of KEDA's Redis list trigger (one
  worker per ``list_length`` queued requests, scale-down after a stabilisation window);
  workers and beat run the cold ``dev`` profile: models load on the first request.
* ``fixed``: ``max_workers`` workers all day, ``prod`` profile.

Counting: a request is a **cold wait** when, at the moment it was sent, no live worker had
its model HOT and consuming (sampled every ``sample_s``); **lost** when no answer came
within the answer timeout; **failed** when the answer was an error. Worker minutes are the
wall-clock minutes each worker process was alive within the replay.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MODES = ("predictive", "reactive", "fixed")

#: The everyday models (eager in ``prod``) and the surge's mix (a premiere: the large ones).
NIGHT_SHARES: Mapping[str, float] = {"short-form": 0.8, "kids": 0.2}
SURGE_SHARES: Mapping[str, float] = {"long-form": 0.35, "premium": 0.25, "short-form": 0.3, "kids": 0.1}


@dataclass(frozen=True)
class DayShape:
    """The compressed day, in traffic minutes (each ``minute_s`` seconds of wall clock)."""

    minute_s: float = 2.0
    night_min: int = 30
    surge_min: int = 8
    after_min: int = 8
    night_rate_per_s: float = 2.0
    surge_factor: float = 10.0

    def __post_init__(self) -> None:
        if self.minute_s <= 0 or self.night_min < 1 or self.surge_min < 1 or self.after_min < 0:
            raise ValueError("minute_s must be > 0, night and surge at least one minute, after_min >= 0")
        if self.night_rate_per_s <= 0 or self.surge_factor < 1:
            raise ValueError("the night rate must be > 0 and the surge factor >= 1")

    @property
    def minutes(self) -> int:
        return self.night_min + self.surge_min + self.after_min

    def in_surge(self, minute: int) -> bool:
        return self.night_min <= minute < self.night_min + self.surge_min

    def rate_per_s(self, minute: int) -> float:
        return self.night_rate_per_s * (self.surge_factor if self.in_surge(minute) else 1.0)

    def shares(self, minute: int) -> Mapping[str, float]:
        return SURGE_SHARES if self.in_surge(minute) else NIGHT_SHARES

    def models(self) -> list[str]:
        return sorted(set(NIGHT_SHARES) | set(SURGE_SHARES))


def schedule(shape: DayShape, seed: int) -> list[tuple[float, str]]:
    """The day's arrivals ``(seconds after the start, model)``: a Poisson process whose rate
    and model mix change at minute boundaries (seeded: every mode gets the same list)."""
    rng = random.Random(seed)
    arrivals: list[tuple[float, str]] = []
    for minute in range(shape.minutes):
        rate, shares = shape.rate_per_s(minute), shape.shares(minute)
        names, weights = list(shares), list(shares.values())
        t = minute * shape.minute_s
        end = t + shape.minute_s
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                break
            arrivals.append((t, rng.choices(names, weights)[0]))
    return arrivals


def minute_counts(arrivals: Sequence[tuple[float, str]], minute_s: float) -> dict[tuple[str, int], int]:
    """``(model, minute) -> arrivals`` of a schedule."""
    counts: dict[tuple[str, int], int] = {}
    for at, model in arrivals:
        k = (model, int(at // minute_s))
        counts[k] = counts.get(k, 0) + 1
    return counts


def earlier_days(shape: DayShape, days: int, seed: int) -> list[dict[tuple[str, int], int]]:
    """The same day's shape as recorded on ``days`` earlier days (index 0: yesterday), each
    drawn with its own seed: the pattern the predictive scaler learns from."""
    return [minute_counts(schedule(shape, seed + 1000 * (d + 1)), shape.minute_s) for d in range(days)]


class QueueLengthTarget:
    """The reactive baseline's target: ``ceil(queued / list_length)`` workers (KEDA's Redis
    list trigger, ``listLength`` requests per replica), never below ``floor``, and a fall
    only once the target stayed lower for ``stabilise_s`` (the HPA's scale-down
    stabilisation window: the highest target seen within it holds).

    ``queued`` is a function returning the requests waiting now (it may raise: the scaler
    keeps its last target).
    """

    def __init__(self, queued: Callable[[], int], list_length: int, floor: int, stabilise_s: float,
                 clock: Callable[[], float]) -> None:  # fmt: skip
        if list_length < 1 or floor < 0 or stabilise_s < 0:
            raise ValueError("list_length must be >= 1, floor and stabilise_s >= 0")
        self.queued, self.list_length, self.floor = queued, list_length, floor
        self.stabilise_s, self.clock = stabilise_s, clock
        self._seen: deque[tuple[float, int]] = deque()

    def __call__(self) -> int:
        now = self.clock()
        wanted = max(self.floor, math.ceil(self.queued() / self.list_length))
        self._seen.append((now, wanted))
        while self._seen and self._seen[0][0] < now - self.stabilise_s:
            self._seen.popleft()
        return max(w for _, w in self._seen)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def worker_minutes(lifetimes: Mapping[str, Sequence[float | None]], start: float, end: float) -> float:
    """Minutes the workers were alive within ``[start, end]`` (a worker still running counts
    until ``end``)."""
    total = 0.0
    for began, stopped in lifetimes.values():
        if began is None:
            continue
        lo, hi = max(began, start), min(stopped if stopped is not None else end, end)
        total += max(0.0, hi - lo)
    return total / 60


def summarise_mode(records: Sequence[Mapping[str, Any]], shape: DayShape, minutes_alive: float) -> dict[str, Any]:
    """One mode's numbers from its request records (``sent_s``, ``latency_s`` or None,
    ``outcome`` in ok/failed/lost, ``cold``)."""

    def part(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        latencies = [r["latency_s"] * 1000 for r in rows if r["outcome"] == "ok"]
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        return {
            "requests": len(rows),
            "failed": sum(r["outcome"] == "failed" for r in rows),
            "lost": sum(r["outcome"] == "lost" for r in rows),
            "cold_waits": sum(bool(r["cold"]) for r in rows),
            "p50_ms": p50,
            "p99_ms": p99,
        }

    surge = [r for r in records if shape.in_surge(int(r["sent_s"] // shape.minute_s))]
    return {**part(records), "worker_minutes": minutes_alive, "surge": part(surge)}


def modes_of(result: Mapping[str, Any]) -> dict[str, Any]:
    """The per-mode entries of a result, in :data:`MODES` order."""
    return {m: result[m] for m in MODES if m in result}


def verdicts(result: Mapping[str, Mapping[str, Any]]) -> dict[str, bool | None]:
    """The issue's targets, each True/False (None where a mode is missing or a value is 0/None)."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    p, r, f = (result.get(m) for m in MODES)
    out: dict[str, bool | None] = {"lost_0_everywhere": all(m["lost"] == 0 for m in result.values())}
    if p and r:
        cw = ratio(p["cold_waits"], r["cold_waits"])
        p99 = ratio(p["surge"]["p99_ms"], r["surge"]["p99_ms"])
        out["cold_waits_le_fifth_of_reactive"] = None if cw is None else cw <= 0.2
        out["surge_p99_le_third_of_reactive"] = None if p99 is None else p99 <= 1 / 3
    if p and f:
        wm = ratio(p["worker_minutes"], f["worker_minutes"])
        out["worker_minutes_le_0.6_of_fixed"] = None if wm is None else wm <= 0.6
    return out
