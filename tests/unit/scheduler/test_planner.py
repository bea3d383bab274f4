"""Planner: budgets, hysteresis, eager models, dead workers, profiles."""

from __future__ import annotations

import random

import pytest

from warmstart.infra.errors import SchedulerError
from warmstart.scheduler.costs import ModelCosts
from warmstart.scheduler.planner import Action, ModelDemand, Plan, PlanConfig, WorkerState, plan
from warmstart.scheduler.policies.base import Tier
from warmstart.workers.capacity import Budgets, Room
from warmstart.workers.tiers import Resident, choose_demotions, steps_between, used_bytes

MiB = 2**20


def apply(workers: list[WorkerState], p: Plan, now_min: int) -> list[WorkerState]:
    """The workers' state after executing the plan."""
    out = []
    for w in workers:
        if not w.alive:
            out.append(w)
            continue
        tiers = {m: t for m, held in p.replicas.items() for wn, t in held if wn == w.name}
        since = {m: (w.placed_at_min.get(m, now_min) if w.tiers.get(m) == t else now_min)
                 for m, t in tiers.items()}
        out.append(WorkerState(w.name, w.device_budget_bytes, w.host_budget_bytes,
                               w.disk_budget_bytes, tiers, since, True))
    return out


def used(p: Plan, costs: dict[str, ModelCosts], worker: str, tier: Tier) -> int:
    return sum(costs[m].size_bytes for m, held in p.replicas.items() for w, t in held
               if w == worker and t == tier)


def test_random_cases_never_exceed_budgets() -> None:
    rng = random.Random(7)
    for _ in range(200):
        costs = {f"m{i}": ModelCosts(f"m{i}", rng.randint(1, 400) * MiB) for i in range(12)}
        demands = [ModelDemand(m, rng.choice(list(Tier)), rng.random(), rng.random() < 0.2)
                   for m in costs]
        workers = [WorkerState(f"w{j}", rng.randint(0, 800) * MiB, rng.randint(0, 800) * MiB,
                               rng.randint(0, 2000) * MiB,
                               {m: rng.choice([Tier.HOT, Tier.HOST, Tier.DISK])
                                for m in rng.sample(list(costs), 4)},
                               alive=rng.random() > 0.2)
                   for j in range(3)]
        p = plan(demands, workers, costs, PlanConfig(profile=rng.choice(["dev", "prod"])))
        for w in workers:
            if not w.alive:
                assert w.name not in p.actions
                continue
            for tier in (Tier.HOT, Tier.HOST, Tier.DISK):
                assert used(p, costs, w.name, tier) <= w.budget(tier)
        # each copy on a live worker, at most one copy of a model per worker, and only HOT
        # models have more than one copy
        assert all(any(w.name == wn and w.alive for w in workers)
                   for held in p.replicas.values() for wn, _ in held)
        for m, held in p.replicas.items():
            assert len({wn for wn, _ in held}) == len(held)
            assert len(held) == 1 or all(t == Tier.HOT for _, t in held)
            assert p.placement[m] == held[0]


def _setup() -> tuple[dict[str, ModelCosts], list[ModelDemand], list[WorkerState]]:
    costs = {m: ModelCosts(m, 100 * MiB) for m in "abcdef"}
    demands = [ModelDemand(m, Tier.HOT, prob) for m, prob in
               zip("abcdef", (0.9, 0.5, 0.31, 0.3, 0.1, 0.05))]
    workers = [WorkerState("w1", 200 * MiB, 200 * MiB, 10**12),
               WorkerState("w2", 100 * MiB, 100 * MiB, 10**12)]
    return costs, demands, workers


def test_no_flapping_with_equal_or_perturbed_inputs() -> None:
    costs, demands, workers = _setup()
    p1 = plan(demands, workers, costs, PlanConfig(now_min=0))
    hot = {m for m, (_, t) in p1.placement.items() if t == Tier.HOT}
    assert hot == {"a", "b", "c"}  # three HOT slots, best value per byte first
    state = apply(workers, p1, 0)
    rng = random.Random(1)
    for tick in range(1, 30):
        # d (0.30) is within a few % of c (0.31) and overtakes it on some ticks.
        noisy = [ModelDemand(d.model, d.tier, d.arrival_prob * rng.uniform(0.9, 1.1))
                 for d in demands]
        p = plan(noisy, state, costs, PlanConfig(now_min=tick))
        assert p.placement == p1.placement
        assert all(a.kind == "keep" for acts in p.actions.values() for a in acts)
        state = apply(state, p, tick)
    # A clearly better newcomer does replace an incumbent once residency has passed.
    better = [ModelDemand("f", Tier.HOT, 0.99) if d.model == "f" else d for d in demands]
    p = plan(better, state, costs, PlanConfig(now_min=100))
    assert p.placement["f"][1] == Tier.HOT and p.placement["c"][1] != Tier.HOT
    assert "f" in {a.model for acts in p.actions.values() for a in acts if a.kind == "prewarm"}


def test_min_residency_holds_a_fresh_placement() -> None:
    costs, demands, workers = _setup()
    state = apply(workers, plan(demands, workers, costs, PlanConfig(now_min=0)), 0)
    better = [ModelDemand("f", Tier.HOT, 0.99) if d.model == "f" else d for d in demands]
    p = plan(better, state, costs, PlanConfig(now_min=2, min_residency_min=5))
    assert p.placement["f"][1] != Tier.HOT
    assert p.keep_warm == ["a", "b", "c"]


def test_eager_models_always_placed_in_prod() -> None:
    costs, demands, workers = _setup()
    eager = [ModelDemand("f", Tier.REMOTE, 0.0, eager=True)] + [d for d in demands if d.model != "f"]
    p = plan(eager, workers, costs, PlanConfig(profile="prod"))
    assert p.placement["f"][1] == Tier.HOT


def test_dead_workers_models_move_to_live_ones() -> None:
    costs, demands, _ = _setup()
    workers = [WorkerState("dead", 10**12, 10**12, 10**12, {"a": Tier.HOT, "b": Tier.HOT},
                           alive=False),
               WorkerState("live", 300 * MiB, 300 * MiB, 10**12)]  # HOT fills host memory too
    p = plan(demands, workers, costs)
    assert p.placement["a"] == ("live", Tier.HOT) and p.placement["b"] == ("live", Tier.HOT)
    assert "dead" not in p.actions
    assert {a.kind for a in p.actions["live"] if a.model in "ab"} == {"prewarm"}


def test_dev_profile_prewarms_nothing() -> None:
    costs, demands, workers = _setup()
    eager = demands + [ModelDemand("g", Tier.HOT, 1.0, eager=True)]
    costs["g"] = ModelCosts("g", MiB)
    workers[0] = WorkerState("w1", 200 * MiB, 200 * MiB, 10**12, {"a": Tier.HOT, "e": Tier.HOT})
    p = plan(eager, workers, costs, PlanConfig(profile="dev"))
    kinds = [a.kind for acts in p.actions.values() for a in acts]
    assert "prewarm" not in kinds and set(p.placement) == {"a", "e"}


def test_errors() -> None:
    costs, demands, workers = _setup()
    with pytest.raises(SchedulerError, match="no costs for model 'zz'"):
        plan([ModelDemand("zz", Tier.HOT)], workers, costs)
    with pytest.raises(SchedulerError, match="unique"):
        plan(demands, [workers[0], workers[0]], costs)


# --- one capacity model: the plan against the worker's own budget rule --------------------

_AS_WORKER = {Tier.HOT: Tier.HOT, Tier.HOST: Tier.HOST, Tier.DISK: Tier.DISK}


def carry_out(worker: WorkerState, actions: list, costs: dict[str, ModelCosts]) -> None:  # noqa: ANN001
    """Carry the plan's actions out in order, as the worker does, with the worker's own rule
    (``workers.tiers``): each raise must find room without demoting anything, and what the
    worker holds at the end must be within each of its budgets."""
    held = {m: Tier(t) for m, t in worker.tiers.items()}
    budgets = {Tier.DEVICE: worker.device_budget_bytes, Tier.HOST: worker.host_budget_bytes,
               Tier.DISK: worker.disk_budget_bytes}
    for action in actions:
        if action.kind in ("drop", "demote"):
            if action.tier == Tier.REMOTE:
                held.pop(action.model, None)
            else:
                held[action.model] = action.tier
        elif action.kind == "prewarm":
            size = costs[action.model].size_bytes
            for step in steps_between(held.get(action.model, Tier.REMOTE), action.tier):
                if step in (Tier.DEVICE, Tier.HOST):  # the levels the pool makes room in
                    others = [Resident(m, t, costs[m].size_bytes, 0.0)
                              for m, t in held.items() if m != action.model]
                    victims = choose_demotions(others, step, size, budgets[step])
                    assert victims == [], (
                        f"{worker.name}: raising {action.model} to {step.name} demotes "
                        f"{[v.model for v in victims]}")
                held[action.model] = step
    residents = [Resident(m, t, costs[m].size_bytes, 0.0) for m, t in held.items()]
    for level, budget in budgets.items():
        assert used_bytes(residents, level) <= budget, (worker.name, level.name)


def test_hot_models_count_in_the_host_budget_so_a_host_prewarm_does_not_evict_them() -> None:
    """The fight of the hardening issue: two HOT models fill the 200 MiB host budget (the
    worker counts them there too), so a HOST pre-warm would make the worker demote one."""
    costs = {m: ModelCosts(m, 100 * MiB) for m in "abc"}
    demands = [ModelDemand("a", Tier.HOT, 0.9), ModelDemand("b", Tier.HOT, 0.8),
               ModelDemand("c", Tier.HOST, 0.5)]
    worker = WorkerState("w", 200 * MiB, 200 * MiB, 10**12, {"a": Tier.HOT, "b": Tier.HOT})
    p = plan(demands, [worker], costs)
    assert p.placement["a"] == ("w", Tier.HOT) and p.placement["b"] == ("w", Tier.HOT)
    assert Action("prewarm", "c", Tier.HOST) not in p.actions["w"]
    assert p.placement["c"] == ("w", Tier.DISK)
    carry_out(worker, p.actions["w"], costs)
    # With room for it in host memory, it goes there.
    roomy = WorkerState("w", 200 * MiB, 300 * MiB, 10**12, {"a": Tier.HOT, "b": Tier.HOT})
    assert plan(demands, [roomy], costs).placement["c"] == ("w", Tier.HOST)


def test_a_model_on_disk_counts_in_the_cache_budget_whatever_its_tier() -> None:
    costs = {m: ModelCosts(m, 100 * MiB) for m in "ab"}
    demands = [ModelDemand("a", Tier.HOT, 0.9), ModelDemand("b", Tier.DISK, 0.5)]
    worker = WorkerState("w", 200 * MiB, 200 * MiB, 150 * MiB)
    p = plan(demands, [worker], costs)
    assert p.placement == {"a": ("w", Tier.HOT)} and p.unplaced == ["b"]


def test_room_is_freed_before_a_worker_is_asked_to_raise_a_model() -> None:
    """Demotions and drops come first, so the worker never makes room by itself (its LRU
    choice could be a model the plan keeps)."""
    costs = {m: ModelCosts(m, 100 * MiB) for m in "abz"}
    worker = WorkerState("w", 100 * MiB, 100 * MiB, 10**12, {"z": Tier.HOT})
    p = plan([ModelDemand("a", Tier.HOT, 0.9)], [worker], costs, PlanConfig(now_min=100))
    assert [a.kind for a in p.actions["w"]] == ["drop", "prewarm"]
    carry_out(worker, p.actions["w"], costs)


def test_random_plans_fit_the_workers_own_budget_rule() -> None:
    rng = random.Random(11)
    for _ in range(300):
        costs = {f"m{i}": ModelCosts(f"m{i}", rng.randint(1, 400) * MiB) for i in range(12)}
        demands = [ModelDemand(m, rng.choice(list(Tier)), rng.random(), rng.random() < 0.2)
                   for m in costs]
        workers = []
        for j in range(3):
            budgets = [rng.randint(0, 800) * MiB, rng.randint(0, 800) * MiB,
                       rng.randint(0, 2000) * MiB]
            # What a worker holds already fits its budgets (the worker enforces them).
            held: dict[str, Tier | str] = {}
            room = Room(Budgets(*budgets))
            for m in rng.sample(list(costs), 5):
                tier = rng.choice([Tier.HOT, Tier.HOST, Tier.DISK])
                if room.fits(costs[m].size_bytes, tier):
                    room.place(costs[m].size_bytes, tier)
                    held[m] = tier
            workers.append(WorkerState(f"w{j}", *budgets, held, alive=rng.random() > 0.2))
        p = plan(demands, workers, costs, PlanConfig(profile=rng.choice(["dev", "prod"]),
                                                     now_min=rng.choice([0, 100])))
        for w in workers:
            if w.alive:
                carry_out(w, p.actions[w.name], costs)


# --- replicas -------------------------------------------------------------------------------


def _three_workers(device_mib: int = 300) -> list[WorkerState]:
    return [WorkerState(f"w{j}", device_mib * MiB, device_mib * MiB, 10**12) for j in range(3)]


def test_an_eager_model_gets_two_hot_copies_in_prod() -> None:
    costs = {"e": ModelCosts("e", 100 * MiB), "a": ModelCosts("a", 100 * MiB)}
    demands = [ModelDemand("e", Tier.REMOTE, 0.0, eager=True), ModelDemand("a", Tier.HOT, 0.5)]
    p = plan(demands, _three_workers(), costs, PlanConfig(profile="prod"))
    assert len(p.replicas["e"]) == 2 and {t for _, t in p.replicas["e"]} == {Tier.HOT}
    assert len({w for w, _ in p.replicas["e"]}) == 2
    assert len(p.replicas["a"]) == 1  # not eager, no load: one copy
    assert sum(a.model == "e" and a.kind == "prewarm" for acts in p.actions.values() for a in acts) == 2
    # One live worker: one copy.
    one = plan(demands, _three_workers()[:1], costs, PlanConfig(profile="prod"))
    assert len(one.replicas["e"]) == 1


def test_measured_load_beyond_one_worker_asks_for_more_copies() -> None:
    costs = {"busy": ModelCosts("busy", 100 * MiB)}
    workers = [WorkerState(f"w{j}", 300 * MiB, 300 * MiB, 10**12) for j in range(5)]
    for load, copies in ((0.5, 1), (1.0, 1), (1.2, 2), (2.5, 3), (50.0, 5)):
        p = plan([ModelDemand("busy", Tier.HOT, 1.0, load=load)], workers, costs)
        assert len(p.replicas["busy"]) == copies, load


def test_a_dead_workers_replica_is_replaced_and_the_other_keeps_serving() -> None:
    costs = {"e": ModelCosts("e", 100 * MiB)}
    workers = [WorkerState("w0", 300 * MiB, 300 * MiB, 10**12, {"e": Tier.HOT}, alive=False),
               WorkerState("w1", 300 * MiB, 300 * MiB, 10**12, {"e": Tier.HOT}),
               WorkerState("w2", 300 * MiB, 300 * MiB, 10**12)]
    p = plan([ModelDemand("e", Tier.REMOTE, 0.0, eager=True)], workers, costs, PlanConfig(profile="prod"))
    assert sorted(p.replicas["e"]) == [("w1", Tier.HOT), ("w2", Tier.HOT)]
    assert Action("keep", "e", Tier.HOT) in p.actions["w1"]
    assert Action("prewarm", "e", Tier.HOT) in p.actions["w2"]
    assert p.keep_warm_on == {"e": ["w1"]}


def test_a_replica_never_takes_the_room_of_another_models_only_copy() -> None:
    costs = {"e": ModelCosts("e", 100 * MiB), "a": ModelCosts("a", 100 * MiB), "b": ModelCosts("b", 100 * MiB)}
    workers = [WorkerState(f"w{j}", 100 * MiB, 100 * MiB, 10**12) for j in range(2)]
    demands = [ModelDemand("a", Tier.HOT, 0.9, load=5.0), ModelDemand("b", Tier.HOT, 0.5)]
    p = plan(demands, workers, costs)
    assert p.placement["a"][1] == Tier.HOT and p.placement["b"][1] == Tier.HOT
    assert len(p.replicas["a"]) == 1 and p.short_replicas == ["a"]
    # An eager model's second copy does come before a lazy model's first (eager first).
    eager = [ModelDemand("e", Tier.REMOTE, 0.0, eager=True), ModelDemand("b", Tier.HOT, 0.5)]
    q = plan(eager, workers, costs, PlanConfig(profile="prod"))
    assert len(q.replicas["e"]) == 2 and q.placement["b"][1] != Tier.HOT
    # ... unless the daily pattern expects the lazy one's arrivals: its first copy comes first.
    coming = [ModelDemand("e", Tier.REMOTE, 0.0, eager=True), ModelDemand("b", Tier.HOT, 0.5, expected=True)]
    r = plan(coming, workers, costs, PlanConfig(profile="prod"))
    assert r.placement["b"][1] == Tier.HOT and len(r.replicas["e"]) == 1 and r.short_replicas == ["e"]


def test_a_joining_worker_is_assigned_the_expected_first_copy_before_an_eager_replica() -> None:
    # w0 holds the eager model; w1 has just joined with room for two models. The first copy
    # of the model the daily pattern expects must come first in w1's assignment (the order
    # a joining worker warms in), before the eager model's replica.
    costs = {m: ModelCosts(m, 40 * MiB) for m in ("e", "b", "c")}
    workers = [WorkerState("w0", 100 * MiB, 100 * MiB, 10**12, {"e": Tier.HOT}, {"e": 0}),
               WorkerState("w1", 80 * MiB, 80 * MiB, 10**12)]
    demands = [ModelDemand("e", Tier.HOT, 0.9, eager=True), ModelDemand("b", Tier.HOT, 0.5, expected=True),
               ModelDemand("c", Tier.HOST, 0.1)]
    p = plan(demands, workers, costs, PlanConfig(profile="prod"))
    assert p.assigned["w1"][0] == ("b", Tier.HOT)
    assert ("e", Tier.HOT) in p.assigned["w1"][1:]
    assert p.assigned["w0"][0] == ("e", Tier.HOT)
    # The assignment is exactly the plan's copies, worker by worker.
    for worker in ("w0", "w1"):
        held = sorted((m, t) for m, copies in p.replicas.items() for w, t in copies if w == worker)
        assert sorted(p.assigned[worker]) == held
    # Warmest tier first within a worker.
    assert p.assigned["w0"] == [("e", Tier.HOT), ("c", Tier.HOST)]


def test_of_two_copies_the_older_is_kept_whatever_the_workers_order() -> None:
    # A request warmed the model on w2 while a plan sent it to w1 as well: one copy is
    # dropped. Keeping the older (w2) every time means the drop an earlier plan sent to w1
    # while it warmed and the drop of this plan name the same copy, never both.
    costs = {"m": ModelCosts("m", 10 * MiB)}
    demands = [ModelDemand("m", Tier.HOT, 0.9)]
    for older, newer in (("w2", "w1"), ("w1", "w2")):
        workers = [WorkerState(name, 100 * MiB, 100 * MiB, 10**12, {"m": Tier.HOT}, {"m": 5},
                               held_since_s={"m": 100.0 if name == older else 100.4})
                   for name in ("w1", "w2")]
        p = plan(demands, workers, costs, PlanConfig(now_min=5))
        assert p.replicas["m"] == [(older, Tier.HOT)]
        assert p.actions[newer] == [Action("drop", "m", Tier.REMOTE)]
        assert p.actions[older] == [Action("keep", "m", Tier.HOT)]
