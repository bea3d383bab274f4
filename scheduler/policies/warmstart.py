"""warmstart's own policy: load a model exactly in the minutes where an arrival is likely
enough to pay for the memory, at the tier whose cost the odds justify.

Keeping a model HOT for one more minute costs that minute of its GPU memory if nothing
arrives, and saves a cold start if something does. If a cold start is worth ``B`` minutes of
the model's GPU memory (``breakeven_min`` scaled by the fleet's reference size over this
model's size; default 240, see ``DEFAULT_BREAKEVEN_MIN``), the model should be
HOT in the next minute exactly when the probability of an arrival then, ``h``, satisfies
``h · B ≥ 1 - h``, i.e. ``h ≥ θ = 1/(1 + B)``. Every minute is an independent decision
(a pre-warm is ordered a minute ahead), so the rule minimises expected waste + B × colds.

``h`` is learned online per model, from three sources, in this order:

1. **Idle-time hazard.** After an arrival, ``h(d)`` for ``d`` minutes of idleness is the
   discrete hazard of the next idle time, ``h(d) = (n(d) + k·h̄(d)) / (R(d) + k)``: ``n(d)``
   idle times of exactly ``d`` minutes, ``R(d)`` idle times of at least ``d`` (at risk),
   shrunk with ``k = PRIOR_WEIGHT`` pseudo-observations towards ``h̄(d)``, the
   occurrence/exposure rate over the log-scale window ``[d/2, 2d]`` (see
   :func:`idle_hazard`). With much data the exact hazard wins, so periodic models end up
   loaded only in the minute they are called; with little data the coarse rate fills the
   holes between observed idle times and reaches a little past the longest one.
2. **Daily profile.** Beyond the hazard's support (idle longer than any seen, blurred),
   once a full day has been observed: the fraction of past days with an arrival within
   ±``DAILY_JITTER_MIN`` minutes of the next minute-of-day.
3. **First gap.** With no idle time observed yet, ``h(d) = 1/(d + 1)``, Laplace's rule of
   succession over the ``d - 1`` minutes without an arrival (:func:`first_gap_prob`). The
   rule ``h ≥ θ`` then keeps the model HOT for exactly ``B`` minutes (the deterministic
   2-competitive ski-rental hold for this valuation), then at HOST over the histogram's
   range (a host copy is cheap).

Every decision carries the ``h`` it was taken on as ``arrival_prob`` (the hazard of that very
minute, not the best minute of a window): a memory budget ranks models by it
(:meth:`warmstart.scheduler.costs.ModelCosts.value_per_byte`), so it must be the policy's belief.

Below the HOT threshold, the model is held at HOST while ``h`` is above the HOST threshold
that :func:`warmstart.scheduler.costs.host_threshold` derives from the tier load times and prices (a
host copy saves most of a cold start for a fraction of the price), else on DISK.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from warmstart.infra.errors import SchedulerError
from warmstart.scheduler.costs import ModelCosts, Prices, host_threshold
from warmstart.scheduler.policies.base import (
    IDLE_BINS,
    MINUTES_PER_DAY,
    Decision,
    ModelContext,
    Policy,
    Tier,
    TrafficState,
    observe,
)

#: Default valuation of a cold start, in minutes of the fleet's reference model's GPU memory:
#: the histogram range (4 h), which is what the published hybrid policy spends on a model it
#: knows nothing about (its standard keep-alive fallback); same price, better placement.
DEFAULT_BREAKEVEN_MIN = 240.0
#: Weight of the coarse-scale prior, in idle times: one pseudo-observation.
PRIOR_WEIGHT = 1.0
#: Minute-of-day tolerance of the daily profile.
DAILY_JITTER_MIN = 2


_D = np.arange(IDLE_BINS)
_FALSE = np.zeros(1, dtype=bool)
#: The log-scale window [d/2, 2d] of each idle length d (``_HI1`` is its end + 1).
_LO = np.maximum(1, _D // 2)
_HI1 = np.minimum(IDLE_BINS - 1, 2 * _D) + 1


def idle_hazard(idle_hist: list[int], idle_oob: int) -> np.ndarray:
    """Hazard of the next idle time for each idle length 0..IDLE_BINS-1 (see module doc).

    ``h(d) = (n(d) + k·h̄(d)) / (R(d) + k)``: ``n(d)`` idle times of exactly ``d`` minutes,
    ``R(d)`` idle times of at least ``d`` (at risk), shrunk with ``k = PRIOR_WEIGHT``
    pseudo-observations towards ``h̄(d)``, the occurrence/exposure rate over the log-scale
    window ``[d/2, 2d]`` (events there / at-risk minutes there).

    Args:
        idle_hist: the idle-time histogram (``IDLE_BINS`` one-minute bins).
        idle_oob: idle times out of the histogram's range.

    Returns:
        ``(IDLE_BINS,)`` float array in [0, 1]; 0 where nothing was ever at risk nearby.
    """
    n = np.asarray(idle_hist, dtype=np.float64)
    if n.sum() + idle_oob <= 0:
        return np.zeros(IDLE_BINS)
    at_risk = np.cumsum(n[::-1])[::-1] + idle_oob
    cum_events = np.concatenate(([0.0], np.cumsum(n)))
    cum_exposure = np.concatenate(([0.0], np.cumsum(at_risk)))
    events = cum_events[_HI1] - cum_events[_LO]
    exposure = cum_exposure[_HI1] - cum_exposure[_LO]
    with np.errstate(divide="ignore", invalid="ignore"):
        coarse = np.where(exposure > 0, events / exposure, 0.0)
    hazard = (n + PRIOR_WEIGHT * coarse) / (at_risk + PRIOR_WEIGHT)
    hazard[0] = 0.0
    return hazard


def hazard_at_1(idle_hist: list[int], idle_oob: int) -> float:
    """``idle_hazard(idle_hist, idle_oob)[1]``, computed alone (same operations, same bits)."""
    at_risk_1 = float(sum(idle_hist[1:]) + idle_oob)
    n1 = float(idle_hist[1])
    at_risk_2 = at_risk_1 - n1
    events = n1 + float(idle_hist[2])
    exposure = at_risk_1 + at_risk_2
    coarse = events / exposure if exposure > 0 else 0.0
    return (n1 + PRIOR_WEIGHT * coarse) / (at_risk_1 + PRIOR_WEIGHT)


def first_gap_prob(idle_min: int) -> float:
    """Arrival probability in the ``idle_min``-th minute after a model's first arrival.

    Nothing is known of the model's idle times yet; the ``idle_min - 1`` minutes since the
    arrival passed without one. Laplace's rule of succession over those minutes gives
    ``1 / (idle_min + 1)``. Thresholding it at ``θ = 1/(1 + B)`` keeps the model HOT for
    exactly ``B`` minutes, the ski-rental hold.
    """
    return 1.0 / (max(idle_min, 0) + 1.0)


def _intervals(mask: np.ndarray) -> list[list[int]]:
    """``[[first_idle_min, last_idle_min], …]`` for runs of True in ``mask``."""
    padded = np.concatenate((_FALSE, mask, _FALSE))
    edges = np.flatnonzero(padded[1:] != padded[:-1]).tolist()  # starts, and ends + 1
    return [[edges[i], edges[i + 1] - 1] for i in range(0, len(edges), 2)]


class WarmstartPolicy(Policy):
    """Cost-threshold policy on a learned arrival probability (see the module docstring)."""

    name = "warmstart"

    def __init__(self, breakeven_min: float = DEFAULT_BREAKEVEN_MIN, prices: Prices | None = None) -> None:
        """Args:
            breakeven_min: what one cold start is worth, in minutes of the model's GPU memory
                (> 0); the policy's only knob, an operator's valuation, not a fitted value.
            prices: memory prices for the HOST threshold (defaults when None).

        Raises:
            SchedulerError: a non-positive ``breakeven_min``.
        """
        if not breakeven_min > 0:
            raise SchedulerError(
                f"warmstart breakeven_min must be > 0 minutes, got {breakeven_min}; use 10 to "
                "value a cold start like fixed-10 keep-alive does"
            )
        self.breakeven_min = float(breakeven_min)
        self.hot_threshold = 1.0 / (1.0 + self.breakeven_min)
        self.prices = prices or Prices()
        self._host_cache: dict[int, tuple[ModelContext, float]] = {}
        self.name = ("warmstart" if self.breakeven_min == DEFAULT_BREAKEVEN_MIN
                     else f"warmstart-{breakeven_min:g}")

    def hot_threshold_for(self, context: ModelContext) -> float:
        """θ for this model: a cold start is worth ``breakeven_min`` minutes of the fleet's
        reference model's memory, i.e. ``B · reference/size`` minutes of this model's."""
        if context.size_bytes and context.reference_bytes:
            breakeven = self.breakeven_min * context.reference_bytes / context.size_bytes
            return 1.0 / (1.0 + breakeven)
        return self.hot_threshold

    def _host_threshold(self, context: ModelContext) -> float:
        cached = self._host_cache.get(id(context))
        if cached is not None and cached[0] is context:
            return cached[1]
        value = self._host_threshold_uncached(context)
        if len(self._host_cache) > 100_000:
            self._host_cache.clear()
        self._host_cache[id(context)] = (context, value)  # the context is kept: its id stays its own
        return value

    def _host_threshold_uncached(self, context: ModelContext) -> float:
        costs = None
        if context.size_bytes and context.size_bytes > 0:
            costs = ModelCosts(context.model, context.size_bytes, dict(context.to_hot_s or {}))
        return host_threshold(costs, self.hot_threshold_for(context), self.prices)

    def replan(self, context: ModelContext, state: TrafficState, now_min: int) -> dict[str, Any]:
        if state.idle_count == 0:
            return {"mode": "ski-rental"}
        hazard = idle_hazard(state.idle_hist, state.idle_oob)
        host_th = self._host_threshold(context)
        hot = hazard >= self.hot_threshold_for(context)
        hot[0] = False
        host = (hazard >= host_th) & ~hot
        host[0] = False
        # The support ends where no observed idle time (blurred) reaches: past it, the
        # daily profile (or nothing) speaks.
        support = np.flatnonzero(hazard > 0)
        last = int(support[-1]) if support.size else 0
        predicted = None
        if hot[1:].any():
            predicted = float(np.argmax(hot[1:]) + 1)
        return {
            "mode": "hazard",
            "hot": _intervals(hot),
            "host": _intervals(host),
            # The belief of each idle minute up to the support, for the decision's
            # arrival_prob (what a budget ranks by); 6 significant digits keep it small.
            "prob": [float(f"{h:.6g}") for h in hazard[:last + 1].tolist()],
            "support_min": last,
            "host_threshold": host_th,
            "predicted_idle_min": predicted,
        }

    def step(self, context: ModelContext, state: TrafficState, now_min: int,
             arrivals: int) -> tuple[Decision, TrafficState]:
        """:meth:`Policy.step`, with the plan built only when it is needed.

        A model with arrivals in consecutive minutes asks, after each, only about the next
        minute (idle minute 1): when its hazard there is at least θ the decision is HOT and
        the plan's first HOT minute is 1, both read from the histogram directly
        (:func:`hazard_at_1`, the same arithmetic as :func:`idle_hazard`, so the same
        decision to the bit). The whole plan is built at the first minute without an arrival
        (or by :meth:`decide` when a stored state has none). A busy model thus costs a few
        microseconds a minute instead of a hazard curve.
        """
        new = observe(state, now_min, arrivals)
        if arrivals > 0:
            if new.idle_oob or any(new.idle_hist):
                h1 = hazard_at_1(new.idle_hist, new.idle_oob)
                if h1 >= self.hot_threshold_for(context):
                    new.plan = {}
                    return Decision(Tier.HOT, float(f"{h1:.6g}"), now_min + 1.0, "hazard"), new
            new.plan = self.replan(context, new, now_min)
        elif not new.plan and new.last_arrival_min is not None:
            new.plan = self.replan(context, new, now_min)
        return self.decide(context, new, now_min), new

    def decide(self, context: ModelContext, state: TrafficState, now_min: int) -> Decision:
        if state.last_arrival_min is None:
            return Decision(Tier.DISK, 0.0, None, "never-seen")
        plan = state.plan
        if not plan or (plan["mode"] == "hazard" and "prob" not in plan):
            # No plan yet, or one stored by a version without per-minute probabilities: the
            # plan is a function of the state since the last arrival, so rebuild it.
            plan = self.replan(context, state, now_min)
        idle_min = now_min + 1 - state.last_arrival_min
        if plan["mode"] == "ski-rental":
            prob = first_gap_prob(idle_min)
            if prob >= self.hot_threshold_for(context):
                return Decision(Tier.HOT, prob, None, "ski-rental")
            daily = self._daily(context, state, now_min, "ski-rental-expired")
            if daily.tier != Tier.DISK:
                return daily
            # Nothing learned yet and a host copy is cheap: hold it over the histogram range.
            prob = max(prob, daily.arrival_prob)
            if idle_min < IDLE_BINS:
                return Decision(Tier.HOST, prob, None, "ski-rental-host")
            return Decision(Tier.DISK, prob, None, daily.reason)
        predicted = plan.get("predicted_idle_min")
        next_min = None if predicted is None else state.last_arrival_min + predicted
        probs = plan["prob"]
        prob = probs[idle_min] if idle_min < len(probs) else 0.0
        for lo, hi in plan["hot"]:
            if lo <= idle_min <= hi:
                return Decision(Tier.HOT, prob, next_min, "hazard")
        if idle_min <= plan["support_min"]:
            for lo, hi in plan["host"]:
                if lo <= idle_min <= hi:
                    return Decision(Tier.HOST, prob, next_min, "hazard-host")
            return Decision(Tier.DISK, prob, next_min, "hazard-unlikely")
        return self._daily(context, state, now_min, "beyond-support")

    def _daily(self, context: ModelContext, state: TrafficState, now_min: int,
               reason: str) -> Decision:
        days = state.days_observed()
        if days < 1 or not state.daily_hits:
            return Decision(Tier.DISK, 0.0, None, reason)
        minute = (now_min + 1) % MINUTES_PER_DAY
        window = [state.daily_hits[(minute + j) % MINUTES_PER_DAY]
                  for j in range(-DAILY_JITTER_MIN, DAILY_JITTER_MIN + 1)]
        prob = min(1.0, max(window) / days)
        if prob >= self.hot_threshold_for(context):
            return Decision(Tier.HOT, prob, None, "daily")
        if prob > 0 and prob >= self._host_threshold(context):
            return Decision(Tier.HOST, prob, None, "daily-host")
        return Decision(Tier.DISK, prob, None, reason)
