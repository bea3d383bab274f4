"""Advice per model: what each policy would cost, and whether to serve it eager or lazy.

Pure computation behind a future ``warmstart advise`` command. It replays the model's traffic
through each policy (:func:`warmstart.scheduler.simulator.replay`, the same code the scheduler runs)
and prices the outcome with the shared cost model (:mod:`warmstart.scheduler.costs`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from warmstart.infra.errors import SchedulerError
from warmstart.scheduler.costs import GiB, ModelCosts, Prices, Throughputs, default_to_hot_s
from warmstart.scheduler.policies import ModelContext, make_policy
from warmstart.scheduler.policies.base import MINUTES_PER_DAY, TIER_ORDER, Tier
from warmstart.scheduler.simulator import DEFAULT_POLICIES, replay
from warmstart.scheduler.traces import Trace


def advise(trace: Trace, policies: list[str] | None = None, prices: Prices | None = None,
           throughputs: Throughputs | None = None,
           measured_to_hot_s: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Per model: arrivals per day, expected cold starts, cold-start seconds and memory cost
    per day under each policy, and a recommendation.

    Args:
        trace: per-model per-minute arrival counts and sizes (a :class:`Trace`; the live
            system builds one from its recorded arrivals).
        policies: policy names (default ``fixed-10``, ``hybrid``, ``warmstart``).
        prices: GPU / host / disk USD per GB-hour (defaults: the settings' prices).
        throughputs: load-time defaults for models without measured times.
        measured_to_hot_s: per model, measured seconds to HOT from each tier (``Tier``
            values as keys); they replace the defaults.

    Returns:
        A JSON-ready list, one dict per model: ``model``, ``size_bytes``,
        ``arrivals_per_day``, ``active_minutes_per_day``, ``policies`` (per policy
        ``cold_starts_per_day``, ``cold_seconds_per_day``, ``hot_hours_per_day``,
        ``host_hours_per_day``, ``memory_usd_per_day``) and ``recommendation``
        (``mode`` eager/lazy, ``tier`` to hold between requests, ``why``). Per-day figures are
        scaled from the trace's length.

    Raises:
        SchedulerError: unknown policy or an empty trace.
    """
    names = list(dict.fromkeys(policies or DEFAULT_POLICIES))
    if "warmstart" not in names:
        names.append("warmstart")  # the recommendation is drawn from it
    for n in names:
        make_policy(n)
    if trace.n_models == 0 or trace.n_minutes == 0:
        raise SchedulerError("the trace has no models or no minutes; nothing to advise on")
    p = prices or Prices()
    size = trace.memory_bytes()
    measured = measured_to_hot_s or {}
    costs = [ModelCosts(n, int(s), dict(measured.get(n) or default_to_hot_s(int(s), throughputs)))
             for n, s in zip(trace.names, size)]
    reference = int(size.mean())
    contexts = [ModelContext(c.model, c.to_hot_s, c.size_bytes, reference) for c in costs]
    per_day = MINUTES_PER_DAY / trace.n_minutes
    active = trace.counts > 0
    seen_before = np.cumsum(active, axis=1) - active > 0
    seconds = np.array([[c.seconds_to_hot(t) for t in TIER_ORDER] for c in costs])
    hot, host = TIER_ORDER.index(Tier.HOT), TIER_ORDER.index(Tier.HOST)
    results: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        tiers, _ = replay(trace, name, contexts)
        cold = active & (tiers != hot)
        from_tier = np.where(seen_before | (tiers == host), tiers, TIER_ORDER.index(Tier.REMOTE))
        cold_s = (np.take_along_axis(seconds, from_tier.astype(np.int64), axis=1) * cold).sum(1)
        hot_min = ((tiers == hot) | active).sum(1)
        host_min = ((tiers == host) & ~active).sum(1)
        results[name] = {"cold": cold.sum(1), "cold_s": cold_s, "hot_min": hot_min,
                         "host_min": host_min}
    ws = make_policy("warmstart")
    rows = []
    for i, c in enumerate(costs):
        gb = c.size_bytes / GiB
        per_policy = {}
        for name, r in results.items():
            usd = gb * (r["hot_min"][i] * p.gpu_gb_hour + r["host_min"][i] * p.host_gb_hour) / 60
            per_policy[name] = {
                "cold_starts_per_day": float(r["cold"][i] * per_day),
                "cold_seconds_per_day": float(r["cold_s"][i] * per_day),
                "hot_hours_per_day": float(r["hot_min"][i] * per_day / 60),
                "host_hours_per_day": float(r["host_min"][i] * per_day / 60),
                "memory_usd_per_day": float(usd * per_day),
            }
        rows.append({
            "model": c.model,
            "size_bytes": c.size_bytes,
            "arrivals_per_day": float(trace.counts[i].sum() * per_day),
            "active_minutes_per_day": float(active[i].sum() * per_day),
            "policies": per_policy,
            "recommendation": _recommend(c, results["warmstart"], i, trace.n_minutes,
                                         1.0 / ws.hot_threshold_for(contexts[i]) - 1.0),
        })
    return rows


def _recommend(costs: ModelCosts, ws: dict[str, np.ndarray], i: int, minutes: int,
               breakeven_min: float) -> dict[str, str]:
    # Eager (always HOT) costs the minutes warmstart leaves the model cold, and saves its cold
    # starts, each worth breakeven_min minutes of the model's GPU memory (the policy's own
    # valuation, so advice and scheduling agree).
    extra_min = minutes - int(ws["hot_min"][i])
    saved_min = float(ws["cold"][i]) * breakeven_min
    if saved_min >= extra_min:
        return {"mode": "eager", "tier": Tier.HOT.name,
                "why": f"{int(ws['cold'][i])} cold starts avoided are worth more than "
                       f"{extra_min} extra HOT minutes"}
    tier = Tier.HOST if ws["host_min"][i] > 0 else Tier.DISK
    return {"mode": "lazy", "tier": tier.name,
            "why": f"keeping it HOT {extra_min} more minutes would cost more than the "
                   f"{int(ws['cold'][i])} cold starts it avoids; hold it at {tier.name}"}
