"""How far warmstart's policy is from what it could reach if it knew each model in advance.

The policy learns every model's idle times online, from nothing, on every replayed trace. Its
cold starts and waste are therefore the sum of two things: what the threshold rule costs
when the arrival probability is known, and what *learning* that probability costs. This
module separates them, replaying the same rule (HOT in a minute exactly when the arrival
probability ``h`` is at least the policy's ``θ`` for that model) with more knowledge than a
live scheduler has:

- ``known-hazard``: each model's own idle-time hazard, counted from all its idle times in
  the trace (``n(d) / R(d)``, hindsight), decides every idle minute. Nothing is learned, so
  this is the rule's cost alone; minutes before a model's first arrival are not HOT.
- ``known-first-gap``: the same hindsight hazard decides only until the model's first idle
  time ends (the minutes where the policy knows nothing about it); the policy decides after.
  The policy's state depends on arrivals alone, so its later decisions are exactly those of
  its own replay.
- ``first_arrival_floor_pct``: the minutes with a model's first arrival over all minutes with
  arrivals. A policy that holds no model it has never seen (none of the simulator's does:
  every model starts unknown) is cold there, so none goes below it on the replayed window.

Both hindsight rows are bounds, not policies: they read the future. They say where the
causal policy's remaining cold starts and waste come from (the rule or the learning), and so
what kind of change could still help. HOT waste and cold % are measured as in
:mod:`warmstart.scheduler.simulator` (same reference: ``fixed-10`` = 100); memory budgets
are not applied.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from warmstart.infra.errors import SchedulerError
from warmstart.scheduler.policies import ModelContext, make_policy
from warmstart.scheduler.policies.base import IDLE_BINS, TIER_ORDER, Tier
from warmstart.scheduler.policies.warmstart import WarmstartPolicy
from warmstart.scheduler.simulator import REFERENCE_POLICY, cold_and_waste, replay, trace_contexts
from warmstart.scheduler.traces import Trace

_HOT = TIER_ORDER.index(Tier.HOT)


def own_hazard(row: np.ndarray) -> np.ndarray:
    """A model's empirical idle-time hazard over the whole row (hindsight).

    Args:
        row: ``(T,)`` arrivals per minute.

    Returns:
        ``(IDLE_BINS,)`` ``h[d] = n(d) / R(d)``: of the idle times of at least ``d`` minutes
        between two minutes with arrivals, the share that ended at ``d`` (0 where none
        reached ``d``; the last, unfinished idle time is not counted).
    """
    gaps = np.diff(np.flatnonzero(row))
    n = np.bincount(gaps[gaps < IDLE_BINS], minlength=IDLE_BINS).astype(np.float64)
    at_risk = np.cumsum(n[::-1])[::-1] + float((gaps >= IDLE_BINS).sum())
    hazard = np.divide(n, at_risk, out=np.zeros(IDLE_BINS), where=at_risk > 0)
    hazard[0] = 0.0
    return hazard


def idle_minutes(row: np.ndarray) -> np.ndarray:
    """``(T,)`` minutes since the latest minute with arrivals before each minute (-1 before
    the first arrival): the ``d`` a policy's decision for that minute is about."""
    t = np.arange(row.size)
    last = np.where(row > 0, t, -1)
    last = np.maximum.accumulate(last)
    since = np.full(row.size, -1, dtype=np.int64)
    since[1:] = np.where(last[:-1] >= 0, t[1:] - last[:-1], -1)
    return since


def known_hazard_hot(row: np.ndarray, theta: float) -> np.ndarray:
    """``(T,)`` True where the model's own hindsight hazard is at least ``theta``: the HOT
    threshold rule of a policy that knew the model's idle times in advance.

    Args:
        row: ``(T,)`` arrivals per minute.
        theta: the HOT threshold for this model.
    """
    since = idle_minutes(row)
    hazard = own_hazard(row)
    valid = (since > 0) & (since < IDLE_BINS)
    hot = np.zeros(row.size, dtype=bool)
    hot[valid] = hazard[since[valid]] >= theta
    return hot


def _warmstart(name: str) -> WarmstartPolicy:
    policy = make_policy(name)
    if not isinstance(policy, WarmstartPolicy):
        raise SchedulerError(
            f"headroom is measured for warmstart policies, not {name!r}; pass warmstart or "
            "warmstart-B (B break-even minutes)"
        )
    return policy


def _row(trace: Trace, hot: np.ndarray, reference_waste_mb_min: float) -> dict[str, Any]:
    metrics = cold_and_waste(trace, hot)
    metrics["waste_pct"] = metrics["waste_mb_min"] / (reference_waste_mb_min or 1.0) * 100
    return metrics


def policy_headroom(trace: Trace, policy_name: str, contexts: list[ModelContext],
                    reference_waste_mb_min: float) -> dict[str, Any]:
    """The policy's replay beside its two hindsight rows (see the module docstring).

    Args:
        trace: the trace.
        policy_name: ``warmstart`` or ``warmstart-B``.
        contexts: the models' contexts (:func:`trace_contexts`); the thresholds use them.
        reference_waste_mb_min: ``fixed-10``'s HOT waste, the 100 of ``waste_pct``.

    Returns:
        JSON-ready ``{"policy", "breakeven_min", "rows": {name: metrics}}`` with rows
        ``policy_name``, ``known-first-gap`` and ``known-hazard``; metrics as
        :func:`cold_and_waste` plus ``waste_pct``.

    Raises:
        SchedulerError: the policy is not a warmstart policy, or its name is unknown.
    """
    policy = _warmstart(policy_name)
    own = replay(trace, policy_name, contexts)[0] == _HOT
    first_gap = own.copy()
    known = np.zeros_like(own)
    for i, row in enumerate(trace.counts):
        active = np.flatnonzero(row)
        if active.size == 0:
            continue
        theta = policy.hot_threshold_for(contexts[i])
        known[i] = known_hazard_hot(row, theta)
        # The first idle time: the minutes after the first arrival, up to the second one.
        start = int(active[0]) + 1
        end = int(active[1]) + 1 if active.size > 1 else row.size
        first_gap[i, start:end] = known[i, start:end]
    return {
        "policy": policy.name,
        "breakeven_min": policy.breakeven_min,
        "rows": {
            policy.name: _row(trace, own, reference_waste_mb_min),
            "known-first-gap": _row(trace, first_gap, reference_waste_mb_min),
            "known-hazard": _row(trace, known, reference_waste_mb_min),
        },
    }


def measure_headroom(trace: Trace, policies: list[str] | None = None) -> dict[str, Any]:
    """:func:`policy_headroom` for each warmstart policy named (default ``warmstart``), on
    one set of contexts and one ``fixed-10`` reference, and the first-arrival floor.

    Returns:
        JSON-ready ``{"first_arrival_floor_pct": float, "policies": [policy_headroom…]}``.

    Raises:
        SchedulerError: an empty trace, or a name that is not a warmstart policy.
    """
    names = list(dict.fromkeys(policies or ["warmstart"]))
    if trace.n_models == 0 or trace.n_minutes == 0:
        raise SchedulerError("the trace has no models or no minutes; check the invocations file")
    for name in names:
        _warmstart(name)  # fail before any replay
    contexts = trace_contexts(trace)
    reference = cold_and_waste(trace, replay(trace, REFERENCE_POLICY, contexts)[0] == _HOT)
    return {
        "first_arrival_floor_pct": first_arrival_floor_pct(trace),
        "policies": [policy_headroom(trace, name, contexts, reference["waste_mb_min"])
                     for name in names],
    }


def first_arrival_floor_pct(trace: Trace) -> float:
    """Minutes holding a model's first arrival, over all minutes with arrivals, ×100."""
    active = trace.counts > 0
    return float(active.any(axis=1).sum() / max(active.sum(), 1) * 100)


__all__ = ["measure_headroom", "policy_headroom", "first_arrival_floor_pct", "own_hazard",
           "idle_minutes", "known_hazard_hot"]
