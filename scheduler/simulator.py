"""Replay a :class:`~warmstart.scheduler.traces.Trace` through the policies, minute by minute.

Each function of the trace is a model, its invocations are inference requests and its memory
is the model's size. Every minute, each model's policy sees that minute's arrivals through the
same :meth:`Policy.step` the live scheduler calls, and decides the model's tier for the next
minute; a pre-warm ordered at the end of minute ``t`` has the model loaded in minute ``t + 1``.

Metrics per policy (as in Shahrad et al.):

- ``overall_cold_pct``: minutes with arrivals in which the model was not HOT, over all minutes
  with arrivals, ×100 (a minute with arrivals holds at most one cold start);
- ``q3_cold_pct``: the 75th percentile over models (with arrivals) of each model's cold %;
- ``waste_pct``: memory × minutes HOT without arrivals, normalised so that ``fixed-10`` = 100;
- ``host_waste_pct``: the same at HOST, on the same scale (host memory is ~500× cheaper);
- ``memory_cost_usd``: what the memory the policy holds costs over the trace, at the
  settings' prices (:class:`~warmstart.scheduler.costs.Prices`): GB × hours HOT × the GPU
  price + GB × hours at HOST × the host price, every minute held (with arrivals or not);
  ``hot_cost_usd`` and ``host_cost_usd`` are its two parts;

With ``learn_minutes`` (``warmstart simulate --learn-minutes``) every policy is replayed from
the trace's first minute but measured only after that many: the models enter the measured
window with the state a live beat that has run before would hold (Redis keeps it across days),
rather than unknown. Every metric, the ``fixed-10`` reference included, then counts only the
measured minutes.

And, under a memory budget (``budget_bytes`` of device memory, the same again of host memory;
default: half the sum of all model sizes, which the policies' HOT sets exceed at peaks):

- ``cold_seconds``: seconds of cold start paid, from the tier each model was at when its
  requests arrived (HOST, DISK, or REMOTE before its first load), with the cost model's times;
- ``budget_cold_pct``: the cold % once the models a policy wants HOT in a minute are cut to
  the budget as the live planner (:func:`warmstart.scheduler.planner.plan`) cuts them on one worker:
  ranked by :meth:`ModelCosts.value_per_byte` of HOT instead of HOST (the arrival
  probability the policy gave, floored at ``PLANNER_MIN_PROB`` like the planner, × seconds
  saved / bytes) and placed greedily, each model that still fits kept, the others evicted
  to HOST; then the models at HOST the same way (HOST instead of DISK), the rest to DISK
  for that minute. What fits is the worker's own rule (:mod:`warmstart.workers.capacity`):
  a HOT model fills the device budget *and* the host budget, so the models at HOST get the
  host memory that the HOT ones leave. The planner's hysteresis (incumbent margin, minimum
  residency) is not modelled. The budget bounds what is held ahead of demand; a model loaded
  by its own requests is served whatever the budget.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from warmstart.infra.errors import SchedulerError
from warmstart.scheduler.costs import GiB, ModelCosts, Prices, Throughputs, default_to_hot_s
from warmstart.scheduler.policies import ModelContext, TrafficState, make_policy
from warmstart.scheduler.policies.base import TIER_ORDER, Tier
from warmstart.scheduler.traces import Trace
from warmstart.workers.capacity import Budgets, Room

#: ``hybrid+host`` is hybrid with the tiers warmstart may use (unloaded models parked at
#: HOST), so that a budgeted comparison measures the policy, not the tier model.
DEFAULT_POLICIES = ["fixed-10", "hybrid", "hybrid+host", "warmstart"]
REFERENCE_POLICY = "fixed-10"
#: Default device (and host) budget as a fraction of the sum of all model sizes.
DEFAULT_BUDGET_FRACTION = 0.5
SWEEP_FIXED_MIN = (1, 2, 5, 20, 30, 60, 120)
SWEEP_WARMSTART_MIN = (2, 5, 20, 40, 80)
#: The planner ranks a model with no stated probability by its seconds saved per byte alone
#: (``warmstart.scheduler.planner`` floors ``arrival_prob`` at this value); the simulator does the same.
PLANNER_MIN_PROB = 1e-12

_HOT, _HOST, _DISK, _REMOTE = (TIER_ORDER.index(t) for t in (Tier.HOT, Tier.HOST, Tier.DISK,
                                                              Tier.REMOTE))


def replay(trace: Trace, policy_name: str, contexts: list[ModelContext] | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Run one policy over the trace.

    Args:
        trace: the trace.
        policy_name: a name :func:`make_policy` knows.
        contexts: one :class:`ModelContext` per model (sizes and load times), or None.

    Returns:
        ``(tiers, probs)``: ``(N, T)`` int8 index into ``TIER_ORDER`` of each model's tier in
        each minute, and ``(N, T)`` float32 arrival probabilities the policy gave with it.

    Raises:
        SchedulerError: unknown policy name.
    """
    policy = make_policy(policy_name)
    n, t_len = trace.counts.shape
    tiers = np.full((n, t_len), _DISK, dtype=np.int8)
    probs = np.zeros((n, t_len), dtype=np.float32)
    code = {t: TIER_ORDER.index(t) for t in TIER_ORDER}
    # Trace minutes count from 1 at midnight of day 1; the policies' clock from 0.
    now = (trace.minutes - 1).tolist()
    for i in range(n):
        row = trace.counts[i]
        first = np.flatnonzero(row)
        if first.size == 0:
            continue
        ctx = contexts[i] if contexts else ModelContext(trace.names[i])
        state = TrafficState()
        step = policy.step
        tier_row, prob_row = tiers[i], probs[i]
        counts = row.tolist()
        for t in range(t_len - 1):
            decision, state = step(ctx, state, now[t], counts[t])
            tier_row[t + 1] = code[decision.tier]
            prob_row[t + 1] = decision.arrival_prob
    return tiers, probs


def default_budget_bytes(trace: Trace) -> int:
    """The default HOT budget: ``DEFAULT_BUDGET_FRACTION`` of the sum of model sizes."""
    return int(trace.memory_bytes().sum() * DEFAULT_BUDGET_FRACTION)


def _budgeted(tiers: np.ndarray, probs: np.ndarray, size: np.ndarray,
              saved_s: np.ndarray, budget_bytes: int) -> tuple[np.ndarray, int]:
    """Tiers after per-minute eviction under a device budget and an equal host budget.

    Per minute and tier, as :func:`warmstart.scheduler.planner.plan` does on one worker with no
    incumbents: the models wanting that tier (HOT, then HOST, the latter including those
    evicted from HOT) are ranked by :meth:`ModelCosts.value_per_byte` of that tier instead of
    the next colder one, with the arrival probability floored at ``PLANNER_MIN_PROB`` (ties
    keep the models' order), and placed greedily in one :class:`Room` (the worker's rule: a
    HOT model fills the device and the host budget): each one that still fits is kept, the
    others go one tier colder. The disk is not limited.

    Args:
        tiers: ``(N, T)`` tier indexes (into ``TIER_ORDER``) the policy wanted.
        probs: ``(N, T)`` the arrival probabilities it gave with them.
        size: ``(N,)`` model sizes in bytes.
        saved_s: ``(N, 2)`` seconds saved per arrival by HOT instead of HOST and by HOST
            instead of DISK.
        budget_bytes: the device budget, and the host budget.

    Returns:
        ``(tiers, evictions)``: the tiers held, and how many model-minutes lost HOT.
    """
    out = tiers.copy()
    evictions = 0
    value = np.maximum(probs.astype(np.float64), PLANNER_MIN_PROB)
    sizes = size.tolist()
    budgets = Budgets(budget_bytes, budget_bytes, 2**62)
    passes = ((_HOT, Tier.HOT, _HOST, saved_s[:, 0]), (_HOST, Tier.HOST, _DISK, saved_s[:, 1]))
    for t in range(tiers.shape[1]):
        col = out[:, t]
        room = Room(budgets)
        for code, tier, colder, saved in passes:
            want = np.flatnonzero(col == code)
            if not want.size:
                continue
            total = int(size[want].sum())
            if room.fits(total, tier):  # all of them fit: no ranking needed
                room.place(total, tier)
                continue
            order = want[np.argsort(-(value[want, t] * saved[want] / size[want]), kind="stable")]
            for i in order.tolist():
                if room.fits(sizes[i], tier):
                    room.place(sizes[i], tier)
                else:
                    col[i] = colder
                    evictions += code == _HOT
    return out, int(evictions)


def trace_contexts(trace: Trace, throughputs: Throughputs | None = None) -> list[ModelContext]:
    """One :class:`ModelContext` per model of the trace: its size, the cost model's load
    times for that size, and the fleet's mean size as the reference a cold start is valued
    against (what the live beat gives the policy)."""
    size = trace.memory_bytes()
    reference = int(size.mean()) if size.size else 0
    return [ModelContext(n, default_to_hot_s(int(s), throughputs), int(s), reference)
            for n, s in zip(trace.names, size)]


def cold_and_waste(trace: Trace, hot: np.ndarray) -> dict[str, Any]:
    """The metrics of a ``(N, T)`` HOT mask alone: ``overall_cold_pct``, ``q3_cold_pct``,
    ``median_cold_pct``, ``waste_mb_min`` (MB × minutes HOT without arrivals) and
    ``cold_starts`` (minutes with arrivals not HOT)."""
    active = trace.counts > 0
    cold = active & ~hot
    n_active = active.sum(axis=1)
    per_model = cold.sum(axis=1)[n_active > 0] / n_active[n_active > 0] * 100
    return {
        "overall_cold_pct": float(cold.sum() / max(active.sum(), 1) * 100),
        "q3_cold_pct": float(np.percentile(per_model, 75)) if per_model.size else 0.0,
        "median_cold_pct": float(np.percentile(per_model, 50)) if per_model.size else 0.0,
        "waste_mb_min": float(((hot & ~active) * trace.memory_mb[:, None]).sum()),
        "cold_starts": int(cold.sum()),
    }


def _metrics(name: str, trace: Trace, tiers: np.ndarray, probs: np.ndarray,
             seconds: np.ndarray, saved_s: np.ndarray, budget_bytes: int,
             elapsed_s: float, prices: Prices, learn_minutes: int = 0) -> dict[str, Any]:
    # Before its first arrival a model has never been fetched: it comes from REMOTE (an
    # arrival during the learning minutes counts: the model was fetched then).
    full_active = trace.counts > 0
    seen_before = (np.cumsum(full_active, axis=1) - full_active > 0)[:, learn_minutes:]
    trace = trace.select(cols=slice(learn_minutes, None))
    tiers, probs = tiers[:, learn_minutes:], probs[:, learn_minutes:]
    active = trace.counts > 0
    hot = tiers == _HOT
    mem_mb = trace.memory_mb[:, None]
    size = trace.memory_bytes()
    gb = size.astype(np.float64) / GiB
    hot_usd = float((hot.sum(axis=1) * gb).sum() * prices.gpu_gb_hour / 60)
    host_usd = float(((tiers == _HOST).sum(axis=1) * gb).sum() * prices.host_gb_hour / 60)
    b_tiers, evictions = _budgeted(tiers, probs, size, saved_s, budget_bytes)
    b_cold = active & (b_tiers != _HOT)
    from_tier = np.where(seen_before | (b_tiers == _HOST), b_tiers, _REMOTE)
    cold_s = np.take_along_axis(seconds, from_tier.astype(np.int64), axis=1)[b_cold].sum()
    return {
        "policy": name,
        **cold_and_waste(trace, hot),
        "host_mb_min": float((((tiers == _HOST) & ~active) * mem_mb).sum()),
        "memory_cost_usd": hot_usd + host_usd,
        "hot_cost_usd": hot_usd,
        "host_cost_usd": host_usd,
        "cold_seconds": float(cold_s),
        "budget_cold_pct": float(b_cold.sum() / max(active.sum(), 1) * 100),
        "evictions": evictions,
        "replay_s": round(elapsed_s, 3),
    }


def simulate(trace: Trace, policies: list[str] | None = None, budget_bytes: int | None = None,
             *, sweep: bool = False, throughputs: Throughputs | None = None,
             prices: Prices | None = None, learn_minutes: int = 0) -> dict[str, Any]:
    """Replay ``trace`` through each policy and measure cold starts, waste and cost.

    Args:
        trace: the trace (see :func:`warmstart.scheduler.traces.load_trace`).
        policies: policy names (default ``fixed-10``, ``hybrid``, ``warmstart``); ``fixed-10``
            is always replayed as the waste reference.
        budget_bytes: device memory budget (and host memory budget) for ``cold_seconds``;
            default a half of the sum of the model sizes.
        sweep: also replay fixed-N and warmstart-B for several N and B (for the trade-off
            plot), under ``"sweep"``.
        throughputs: load-time defaults of the cost model.
        prices: memory prices for ``memory_cost_usd`` (default: the settings' defaults).
        learn_minutes: replay the first ``learn_minutes`` minutes without measuring them:
            the policies enter the measured window with what they learned, as a live beat
            that has run before does (0: measure from the first minute, every model unknown).

    Returns:
        JSON-ready ``{"policies": {name: metrics}, "sweep": {name: metrics}, "trace": {…},
        "budget_bytes": int, "elapsed_s": float}``; metrics are listed in the module doc.

    Raises:
        SchedulerError: unknown policy name, empty trace, non-positive budget, or
            ``learn_minutes`` outside ``[0, minutes)``.
    """
    names = list(dict.fromkeys(policies or DEFAULT_POLICIES))
    for name in names:
        make_policy(name)  # fail before any work on an unknown name
    if trace.n_models == 0 or trace.n_minutes == 0:
        raise SchedulerError("the trace has no models or no minutes; check the invocations file")
    if not 0 <= learn_minutes < trace.n_minutes:
        raise SchedulerError(
            f"learn_minutes must be in [0, {trace.n_minutes}) for this {trace.n_minutes}-minute "
            f"trace, got {learn_minutes}; leave minutes to measure after the learning ones"
        )
    budget = default_budget_bytes(trace) if budget_bytes is None else int(budget_bytes)
    if budget <= 0:
        raise SchedulerError(f"budget_bytes must be > 0, got {budget}")
    size = trace.memory_bytes()
    contexts = trace_contexts(trace, throughputs)
    seconds_by_model = [c.to_hot_s or {} for c in contexts]
    seconds = np.array([[d[t.name] for t in TIER_ORDER] for d in seconds_by_model])
    costs = [ModelCosts(n, int(s), d) for n, d, s in zip(trace.names, seconds_by_model, size)]
    saved_s = np.array([[c.seconds_saved(Tier.HOT, Tier.HOST), c.seconds_saved(Tier.HOST, Tier.DISK)]
                        for c in costs])
    extra = []
    if sweep:
        extra = [f"fixed-{n}" for n in SWEEP_FIXED_MIN] + [
            f"warmstart-{b}" for b in SWEEP_WARMSTART_MIN]
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys([REFERENCE_POLICY] + names + extra):
        t0 = time.perf_counter()
        tiers, probs = replay(trace, name, contexts)
        results[name] = _metrics(name, trace, tiers, probs, seconds, saved_s, budget,
                                 time.perf_counter() - t0, prices or Prices(), learn_minutes)
    ref = results[REFERENCE_POLICY]["waste_mb_min"] or 1.0
    for r in results.values():
        r["waste_pct"] = r["waste_mb_min"] / ref * 100
        r["host_waste_pct"] = r["host_mb_min"] / ref * 100
    active = trace.counts[:, learn_minutes:] > 0
    return {
        "policies": {n: results[n] for n in names},
        "sweep": {n: results[n] for n in results if n not in names},
        "trace": {
            "source": trace.source,
            "models": trace.n_models,
            "minutes": trace.n_minutes,
            "first_minute": int(trace.minutes[0]),
            "learn_minutes": learn_minutes,
            "invocations": int(trace.counts[:, learn_minutes:].sum()),
            "active_minutes": int(active.sum()),
            "total_memory_mb": float(trace.memory_mb.sum()),
        },
        "budget_bytes": budget,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }


__all__ = ["simulate", "replay", "trace_contexts", "cold_and_waste", "default_budget_bytes",
           "DEFAULT_POLICIES", "ModelCosts"]
