"""The beat's side of the scaling signal: read the inputs, call :mod:`warmstart.scheduler.scaling`,
publish ``desired_workers`` (a Redis key and the ``warmstart_desired_workers`` gauge).

Keys (under ``ws:``)::

    scale:desired:<pool>   STRING JSON {"workers", "compute_workers", "memory_workers",
                                        "lead_min", "held", "draining", "at"}
    scale:draining         SET    workers the signal chose to remove (the planner places their
                                  models elsewhere; the local scaler stops them)
    scale:leaving          SET    workers that asked to leave (`warmstart drain`, SIGTERM, a
                                  preStop; workers/handover.py)

A Redis that refuses these keys is logged and the last good decision stands (the gauge keeps
its value); the tick goes on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from warmstart.infra.errors import WarmstartError
from warmstart.infra.redis_client import key, redis_errors
from warmstart.infra.settings import Settings
from warmstart.infra.tiers import Tier
from warmstart.workers.handover import LEAVING
from warmstart.scheduler.scaling import (
    DAY_MIN, ModelLoad, ScaleConfig, ScaleDecision, daily_mean, desired_workers, expected_by_pattern, forecast, step_down,
)

log = logging.getLogger(__name__)

POOL = "default"
HISTORY_DAYS = 3
RECENT_MIN = 3


def desired_key(pool: str = POOL) -> str:
    return key("scale", "desired", pool)


DRAINING = key("scale", "draining")


def read_desired(client: "redis.Redis[str]", pool: str = POOL) -> dict[str, Any] | None:
    """The last published signal (None before the first)."""
    with redis_errors(client, "reading desired_workers"):
        raw = client.get(desired_key(pool))
    return json.loads(raw) if raw else None


def leaving_workers(client: "redis.Redis[str]") -> tuple[set[str], set[str]]:
    """``(chosen to drain by the signal, asked to leave)``: the planner places on neither."""
    with redis_errors(client, "reading the draining workers"):
        pipe = client.pipeline()
        pipe.smembers(DRAINING)
        pipe.smembers(LEAVING)
        chosen, asked = pipe.execute()
    return set(chosen), set(asked)


class ScaleSignal:
    """Computes and publishes ``desired_workers`` once per acting tick."""

    def __init__(self, settings: Settings, client: "redis.Redis[str]", traffic: Any, gauge: Any) -> None:
        self.settings = settings
        self.client = client
        self.traffic = traffic
        self.gauge = gauge
        self.last: ScaleDecision | None = None
        self.leaving: set[str] = set()  # chosen or asked: the planner places on none of them
        self.asked: set[str] = set()  # asked to leave (`warmstart drain`): removed first
        self.lead_min = 0
        self._forecasts: dict[str, list[float]] | None = None  # per tick, from prepare()
        self._prepared_min: int | None = None  # the tick prepare() last ran for

    def refresh_leaving(self) -> set[str]:
        """Read the workers to keep models off (kept as they were when Redis fails)."""
        try:
            chosen, self.asked = leaving_workers(self.client)
            self.leaving = (chosen if self.settings.scale_drain else set()) | self.asked
        except WarmstartError as e:
            log.warning("could not read the draining workers (%s); using the last read", e)
        return self.leaving

    def prepare(self, catalog: Mapping[str, int], costs: Mapping[str, Any], now_min: int) -> set[str]:
        """Read each model's recent and daily traffic over the lead window (kept for
        :meth:`update`); the models the daily pattern expects in that window, for the beat
        to pre-warm (:func:`~warmstart.scheduler.scaling.expected_by_pattern`). An empty set
        (and no forecast) when Redis fails: the tick goes on."""
        minute_s = self.settings.traffic_minute_s
        # The lead time: a worker started now, two beat ticks (one to see it registered, one
        # to dispatch its pre-warms), then the slowest model's way to HOT; and one minute
        # more: the current minute is partly gone, and the minute ``lead`` ahead must be seen
        # at least the lead time before it starts.
        to_hot_s = max((costs[m].to_hot_s.get("REMOTE", 0.0) for m in catalog if m in costs), default=0.0)
        lead_s = self.settings.scale_worker_start_s + 2 * self.settings.plan_interval_s + to_hot_s
        self.lead_min = 1 + max(1, math.ceil(lead_s / minute_s))
        window = self.lead_min + 1
        self._prepared_min, self._forecasts = now_min, {}
        expected: set[str] = set()
        try:
            for model in catalog:
                recent = self.traffic.minute_counts(model, now_min - RECENT_MIN, now_min)
                history: dict[int, int] = {}
                for day in range(1, HISTORY_DAYS + 1):
                    start = now_min - day * DAY_MIN
                    history.update(self.traffic.minute_counts(model, start, start + window))
                self._forecasts[model] = forecast(recent, history, now_min, window, RECENT_MIN, HISTORY_DAYS)
                if expected_by_pattern(daily_mean(history, now_min, window, HISTORY_DAYS)):
                    expected.add(model)
        except WarmstartError as e:
            log.error("traffic unreadable for the forecast (%s); no pattern pre-warm this tick", e)
            self._forecasts = None
            return set()
        return expected

    def update(self, view: Any, catalog: Mapping[str, int], demands: Sequence[Any], costs: Mapping[str, Any], now_min: int) -> ScaleDecision | None:
        """One tick's decision, published; None (and the last decision kept) when it fails."""
        try:
            if self._prepared_min != now_min:  # not read yet this tick (once: a failure is not retried)
                self.prepare(catalog, costs, now_min)
            if self._forecasts is None:
                raise WarmstartError("the traffic could not be read")
            decision = self._decide(view, catalog, demands)
            self._publish(decision, view)
        except WarmstartError as e:
            log.error("desired_workers not updated (the last decision stands): %s", e)
            return None
        finally:
            self._forecasts, self._prepared_min = None, None  # read again next tick
        self.last = decision
        self.gauge.labels(POOL).set(decision.workers)
        return decision

    def _decide(self, view: Any, catalog: Mapping[str, int], demands: Sequence[Any]) -> ScaleDecision:
        minute_s = self.settings.traffic_minute_s
        eager = self.settings.profile == "prod"
        hot = {d.model for d in demands if d.tier == Tier.HOT or (eager and d.eager)}
        forecasts = self._forecasts or {}
        loads = [ModelLoad(model, forecasts.get(model, []), view.service_s.get(model, 0.0) if hasattr(view, "service_s") else 0.0,
                           size, model in hot) for model, size in catalog.items()]  # fmt: skip
        budgets = [w.device_budget_bytes for w in view.workers if w.alive and w.device_budget_bytes > 0]
        config = ScaleConfig(
            self.settings.scale_min_workers, self.settings.scale_max_workers, self.settings.worker_concurrency,
            min(budgets) if budgets else self.settings.device_budget_bytes, minute_s, self.lead_min,
            self.settings.scale_target_utilization,
        )  # fmt: skip
        decision = desired_workers(loads, config)
        live = {w.name: {m for m, t in w.tiers.items() if Tier.parse(t) == Tier.HOT} for w in view.workers if w.name in view.alive}
        previous = self.last.workers if self.last is not None else None
        if previous is None:  # a beat that just took over: the published value, else the workers there are
            stored = read_desired(self.client)
            previous = int(stored["workers"]) if stored else len(live)
        if not self.settings.scale_drain:
            # Nobody empties workers ahead of removal here: the signal says how many are
            # needed, and whoever removes one hands its models over first (preStop drain).
            return decision
        return step_down(decision, previous, live, self.asked, self.last.draining if self.last else ())

    def _publish(self, decision: ScaleDecision, view: Any) -> None:
        record = {
            "workers": decision.workers, "compute_workers": decision.compute_workers,
            "memory_workers": decision.memory_workers, "peak_load": round(decision.peak_load, 4),
            "lead_min": self.lead_min, "held": decision.held, "draining": decision.draining, "at": time.time(),
        }  # fmt: skip
        with redis_errors(self.client, "publishing desired_workers"):
            pipe = self.client.pipeline(transaction=True)
            pipe.set(desired_key(), json.dumps(record))
            pipe.delete(DRAINING)
            if decision.draining:
                pipe.sadd(DRAINING, *decision.draining)
            if view.dead:
                pipe.srem(LEAVING, *view.dead)
            pipe.execute()
