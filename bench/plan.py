"""``warmstart bench plan``: one beat tick at fleet scale, without Redis.

A tick is what the beat computes every ``WARMSTART_PLAN_INTERVAL_S``: one policy step per
model for the minute that just ended, then :func:`warmstart.scheduler.planner.plan` over
every model and worker. The fleet is synthetic and seeded: sizes log-normal (median 200 MiB,
from 20 MiB to 4 GiB), arrival rates Zipf-like over the models (a few busy, most rare), 1 %
eager, 24 GiB of device, 64 GiB of host and 512 GiB of cache per worker, and a cluster that
already holds the previous tick's plan (so the tick measured is a steady one, with
incumbents, not the first placement). The policies' states are warmed with ``history_min``
minutes of that traffic first (not timed). The same tick is timed for the reference
policies side by side; the target (``tick_s`` ≤ 1 s for 10,000 models on 100 workers) is
for ``warmstart``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from warmstart.bench.report import environment, format_seconds, format_target, make_table
from warmstart.scheduler.costs import GiB, MiB, ModelCosts, default_to_hot_s
from warmstart.scheduler.planner import ModelDemand, PlanConfig, WorkerState, plan
from warmstart.scheduler.policies import ModelContext, TrafficState, make_policy

TARGET_TICK_S = 1.0
POLICIES = ("warmstart", "hybrid", "fixed-10")


@dataclass(frozen=True)
class PlanBenchConfig:
    models: int = 10_000
    workers: int = 100
    history_min: int = 60
    seed: int = 7
    service_s: float = 0.05


def _fleet(cfg: PlanBenchConfig) -> tuple[list[str], np.ndarray, np.ndarray, set[str]]:
    rng = np.random.default_rng(cfg.seed)
    names = [f"m{i:05d}" for i in range(cfg.models)]
    sizes = np.clip(rng.lognormal(np.log(200 * MiB), 1.0, cfg.models), 20 * MiB, 4 * GiB).astype(np.int64)
    # Arrivals per minute: Zipf-like over the models (rank^-1.1), 2,000 a minute in all.
    rates = 1.0 / np.arange(1, cfg.models + 1) ** 1.1
    rates = rng.permutation(rates / rates.sum() * 2000.0)
    eager = {names[i] for i in rng.choice(cfg.models, max(1, cfg.models // 100), replace=False)}
    return names, sizes, rates, eager


def _tick(policy_name: str, cfg: PlanBenchConfig) -> dict[str, Any]:
    names, sizes, rates, eager = _fleet(cfg)
    rng = np.random.default_rng(cfg.seed + 1)
    policy = make_policy(policy_name)
    reference = int(sizes.mean())
    contexts = [ModelContext(n, default_to_hot_s(int(s)), int(s), reference) for n, s in zip(names, sizes)]
    costs = {n: ModelCosts(n, int(s), c.to_hot_s) for n, s, c in zip(names, sizes, contexts)}
    arrivals = rng.poisson(rates[:, None], size=(cfg.models, cfg.history_min + 1))
    states = [TrafficState() for _ in names]
    decisions = [None] * cfg.models
    for minute in range(cfg.history_min):  # warm the states (not timed)
        for i, ctx in enumerate(contexts):
            decisions[i], states[i] = policy.step(ctx, states[i], minute, int(arrivals[i, minute]))
    workers = [WorkerState(f"w{j:03d}", 24 * GiB, 64 * GiB, 512 * GiB) for j in range(cfg.workers)]

    def demands(now_min: int) -> list[ModelDemand]:
        return [ModelDemand(n, d.tier, d.arrival_prob, eager=n in eager,  # type: ignore[union-attr]
                            load=float(arrivals[i, now_min]) / 60 * cfg.service_s)
                for i, (n, d) in enumerate(zip(names, decisions))]

    # The cluster holds the previous tick's plan (not timed).
    config = PlanConfig(profile="prod", now_min=cfg.history_min)
    previous = plan(demands(cfg.history_min - 1), workers, costs, config)
    held: dict[str, dict[str, Any]] = {w.name: {} for w in workers}
    for model, copies in previous.replicas.items():
        for worker, tier in copies:
            held[worker][model] = tier
    workers = [replace(w, tiers=held[w.name], placed_at_min={m: 0 for m in held[w.name]}) for w in workers]

    now = cfg.history_min
    t0 = time.perf_counter()
    for i, ctx in enumerate(contexts):
        decisions[i], states[i] = policy.step(ctx, states[i], now, int(arrivals[i, now]))
    t1 = time.perf_counter()
    result = plan(demands(now), workers, costs, PlanConfig(profile="prod", now_min=now + 1))
    t2 = time.perf_counter()
    hot_copies = sum(1 for copies in result.replicas.values() for _, t in copies if t.name == "HOT")
    return {
        "policy": policy_name,
        "policy_step_s": t1 - t0,
        "plan_s": t2 - t1,
        "tick_s": t2 - t0,
        "hot_copies": hot_copies,
        "replicated_models": sum(1 for copies in result.replicas.values() if len(copies) > 1),
        "actions": sum(len(a) for a in result.actions.values()),
    }


def run_plan_benchmark(cfg: PlanBenchConfig, progress: Any = None) -> dict[str, Any]:
    """One steady tick per policy; ``warmstart``'s numbers at the top level."""
    rows = []
    for name in POLICIES:
        if progress:
            progress(f"{name}: warming {cfg.models} policy states over {cfg.history_min} minutes …")
        rows.append(_tick(name, cfg))
    main = rows[0]
    return {
        "models": cfg.models,
        "workers": cfg.workers,
        "tick_s": main["tick_s"],
        "policy_step_s": main["policy_step_s"],
        "plan_s": main["plan_s"],
        "target_tick_s": TARGET_TICK_S,
        "tick_target_met": main["tick_s"] <= TARGET_TICK_S,
        "policies": rows,
        "environment": environment(history_min=cfg.history_min, seed=cfg.seed),
    }


def plan_tables(result: dict[str, Any]) -> list[Any]:
    rows = [[r["policy"], format_seconds(r["policy_step_s"]), format_seconds(r["plan_s"]),
             format_seconds(r["tick_s"]), str(r["hot_copies"]), str(r["replicated_models"])]
            for r in result["policies"]]
    rows.append(["target (warmstart)", "", "", f"≤ {format_seconds(result['target_tick_s'])}",
                 format_target(result["tick_target_met"]), ""])
    return [make_table(f"one beat tick: {result['models']} models on {result['workers']} workers",
                       ["policy", "policy steps", "plan()", "tick", "HOT copies", "replicated"], rows)]
