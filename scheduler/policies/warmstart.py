"""warmstart's own policy: load a model exactly in the minutes where an arrival is likely
enough to pay for the memory, at the tier whose cost the odds justify.

Keeping a model HOT for one more minute costs that minute of its GPU memory if nothing
arrives, and saves a cold start if something does. If a cold start is worth ``B`` minutes of
the model's GPU memory (``breakeven_min`` scaled by the fleet's reference size over this
model's size; default 240, see ``DEFAULT_BREAKEVEN_MIN``), the model should be
HOT in the next minute exactly when the probability of an arrival then, ``h``, satisfies
``h · B ≥ 1 - h``, i.e. ``h ≥ θ = 1/(1 + B)``. Every minute is an independent decision
(a pre-warm is ordered a minute ahead), so the rule minimises expected waste + B × colds.

``h`` is learned online per model:

1. **First gap.** With no idle time observed yet, ``h(d) = 1/(d + 1)``, Laplace's rule of
   succession over the ``d - 1`` minutes without an arrival (:func:`first_gap_prob`). The
   rule ``h ≥ θ`` then keeps the model HOT for exactly ``B`` minutes (the deterministic
   2-competitive ski-rental hold for this valuation), then at HOST over the histogram's
   range (a host copy is cheap).
2. **Idle-time hazard.** After that, ``h(d)`` pools the model's idle times, their coarse
   (log-window) rate and the first-gap rule kept as one pseudo idle time
   (:mod:`warmstart.scheduler.policies.hazard`). Many idle times: the exact hazard, a timer
   is HOT only in its minute. Few: the prior still weighs, so the model is held over the
   gaps its histogram cannot vouch for yet. Idle longer than anything the data reach: the
   hazard is the first-gap rule again, and so is the decision (the same ski-rental hold).
3. **Daily profile.** Past the first-gap hold, once a full day has been observed: the
   fraction of past days with an arrival within ±``DAILY_JITTER_MIN`` minutes of the next
   minute-of-day.

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
from warmstart.scheduler.policies.hazard import (
    data_support,
    first_gap_prob,
    hazard_at_1,
    idle_hazard,
)

#: Default valuation of a cold start, in minutes of the fleet's reference model's GPU memory:
#: the histogram range (4 h), which is what the published hybrid policy spends on a model it
#: knows nothing about (its standard keep-alive fallback); same price, better placement.
DEFAULT_BREAKEVEN_MIN = 240.0
#: Minute-of-day tolerance of the daily profile.
DAILY_JITTER_MIN = 2

_FALSE = np.zeros(1, dtype=bool)


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
        # Past the data's reach the hazard is the first-gap rule, and decide() applies that
        # rule itself (with the daily profile), so the plan stops there.
        last = data_support(state.idle_hist, state.idle_oob)
        host_th = self._host_threshold(context)
        hot = hazard >= self.hot_threshold_for(context)
        hot[0] = False
        hot[last + 1:] = False
        host = (hazard >= host_th) & ~hot
        host[0] = False
        host[last + 1:] = False
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
            return self._first_gap(context, state, now_min, idle_min, "ski-rental")
        if idle_min > plan["support_min"]:
            if state.idle_oob:  # idle times past the histogram: the daily profile knows more
                return self._daily(context, state, now_min, "beyond-support")
            # Longer than any idle time seen: the hazard is the first-gap rule again.
            return self._first_gap(context, state, now_min, idle_min, "beyond-support")
        predicted = plan.get("predicted_idle_min")
        next_min = None if predicted is None else state.last_arrival_min + predicted
        prob = plan["prob"][idle_min]
        for lo, hi in plan["hot"]:
            if lo <= idle_min <= hi:
                return Decision(Tier.HOT, prob, next_min, "hazard")
        for lo, hi in plan["host"]:
            if lo <= idle_min <= hi:
                return Decision(Tier.HOST, prob, next_min, "hazard-host")
        return Decision(Tier.DISK, prob, next_min, "hazard-unlikely")

    def _first_gap(self, context: ModelContext, state: TrafficState, now_min: int,
                   idle_min: int, tag: str) -> Decision:
        """The decision when nothing in the idle-time data reaches ``idle_min``: the
        ski-rental hold on ``1/(d + 1)``, then the daily profile, then HOST over the
        histogram range (a host copy is cheap), then DISK."""
        prob = first_gap_prob(idle_min)
        if prob >= self.hot_threshold_for(context):
            return Decision(Tier.HOT, prob, None, tag)
        daily = self._daily(context, state, now_min, tag + "-expired")
        if daily.tier != Tier.DISK:
            return daily
        prob = max(prob, daily.arrival_prob)
        if idle_min < IDLE_BINS:
            return Decision(Tier.HOST, prob, None, tag + "-host")
        return Decision(Tier.DISK, prob, None, daily.reason)

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
