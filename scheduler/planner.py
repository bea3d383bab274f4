"""The planner: place models on workers' tiers within budgets, by value per byte.

Pure: plain dataclasses in, a :class:`Plan` out; the beat task reads the inputs from Redis
and turns the actions into tasks on each worker's queue.

Per tier, from warmest (HOT on the device budget, then HOST, then DISK), models that want that
tier or warmer are ranked by value per byte — expected cold-start seconds avoided in the next
minute per byte of that tier's budget (:meth:`ModelCosts.value_per_byte`) — and placed
greedily. Eager models (in ``prod``) come first. Hysteresis keeps placements stable:

- an incumbent (a model already at that tier or warmer on a worker) has its value multiplied
  by ``replace_margin``, so a newcomer must be clearly better to take its place;
- a model placed less than ``min_residency_min`` minutes ago is not moved or demoted while it
  fits;
- a model stays on the worker where it already is when that worker has room; of several
  copies, the warmest, then the oldest, is kept.

Replicas: a model planned HOT may get more than one HOT copy, each on another live worker
(:func:`replicas_wanted`): two for an eager model in ``prod`` when two or more workers are
alive, and as many as its measured load needs (``load`` = arrivals per second × service
seconds, one worker serving ``worker_capacity`` of it). Eager models' copies are placed
first, then every other model's first copy, then the other models' extra copies, so a
replica never takes the room of another model's only copy. Below HOT a model is placed once.
A dead worker's copies count as not placed anywhere, so the next plan places them on live
workers (its other replicas keep serving meanwhile). Budgets follow the worker's own rule
(:mod:`warmstart.workers.capacity`): a model counts against the budget of every level at or
below its tier (HOT: device, host and cache; HOST: host and cache; DISK: cache), so the
planned state never exceeds a budget the way the worker counts it, and carrying the plan out
never makes a worker demote a model the plan keeps. Per worker, demotions and drops are listed
before pre-warms, so the room is freed before it is taken. Profile ``dev`` is cold: the
planner orders no pre-warm, only keeps, demotes and drops what is already loaded; ``prod``
pre-warms.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Literal

from warmstart.infra.errors import SchedulerError
from warmstart.scheduler.costs import ModelCosts
from warmstart.infra.tiers import Tier, policy_tier
from warmstart.scheduler.policies.base import TIER_ORDER
from warmstart.workers.capacity import Budgets, Room

_RANK = {t: i for i, t in enumerate(TIER_ORDER)}  # 0 = HOT (warmest)
_PLACED_TIERS = (Tier.HOT, Tier.HOST, Tier.DISK)


@dataclass(frozen=True)
class ModelDemand:
    """A policy's prediction for one model.

    Attributes:
        model: the model's name.
        tier: the tier the policy wants the model at (REMOTE = may be dropped).
        arrival_prob: probability of an arrival in the next minute (0..1).
        eager: pre-warm before any traffic (placed HOT in ``prod`` whenever it fits).
        expected: the recorded daily pattern expects arrivals within the lead time: its
            first copy ranks with eager first copies, ahead of eager replicas (a replica is
            for a failover, the first copy serves the arrivals that are coming).
        load: measured busy seconds per second (arrivals per second × service seconds);
            more than one worker's ``worker_capacity`` asks for more HOT replicas.
    """

    model: str
    tier: Tier
    arrival_prob: float = 0.0
    eager: bool = False
    load: float = 0.0
    expected: bool = False


@dataclass(frozen=True)
class WorkerState:
    """One worker as the planner sees it.

    Attributes:
        name: the worker's name.
        device_budget_bytes, host_budget_bytes, disk_budget_bytes: budgets per tier.
        tiers: the current tier of each model it holds (``Tier`` or its value).
        placed_at_min: minute each held model reached its current tier (for min residency).
        alive: False when its heartbeat expired; its models are re-placed elsewhere.
        held_since_s: when each held model reached its current tier, in seconds: of two
            copies at one tier the older is kept, so that two plans in a row agree (a plan
            that kept the newer copy could drop both: the older by its own action, the newer
            by a drop an earlier plan sent while it was still warming).
    """

    name: str
    device_budget_bytes: int
    host_budget_bytes: int
    disk_budget_bytes: int
    tiers: dict[str, Tier | str] = field(default_factory=dict)
    placed_at_min: dict[str, int] = field(default_factory=dict)
    alive: bool = True
    held_since_s: dict[str, float] = field(default_factory=dict)

    def budget(self, tier: Tier) -> int:
        """The budget of the level a placement at ``tier`` is named by (HOT: the device)."""
        return {Tier.HOT: self.device_budget_bytes, Tier.HOST: self.host_budget_bytes,
                Tier.DISK: self.disk_budget_bytes}[tier]

    def budgets(self) -> Budgets:
        return Budgets(self.device_budget_bytes, self.host_budget_bytes, self.disk_budget_bytes)


@dataclass(frozen=True)
class PlanConfig:
    """Planner settings.

    Attributes:
        profile: ``dev`` (cold: nothing pre-warmed) or ``prod`` (hot: pre-warm by demand).
        now_min: the current minute (for minimum residency).
        replace_margin: factor by which an incumbent's value is raised against newcomers.
        min_residency_min: minutes a placement is held before it may be moved or demoted.
        worker_capacity: busy seconds per second one worker gives one model (1.0: one
            forward at a time, always busy).
        max_replicas: the most HOT copies of one model.
    """

    profile: Literal["dev", "prod"] = "prod"
    now_min: int = 0
    replace_margin: float = 1.5
    min_residency_min: int = 5
    worker_capacity: float = 1.0
    max_replicas: int = 8


@dataclass(frozen=True)
class Action:
    """One change (or confirmation) for a worker: ``prewarm``, ``keep``, ``demote``, ``drop``."""

    kind: Literal["prewarm", "keep", "demote", "drop"]
    model: str
    tier: Tier


@dataclass
class Plan:
    """The planner's output.

    Attributes:
        actions: per live worker, its actions (one per model it should or did hold).
        placement: per model, ``(worker, tier)`` of its first (warmest) copy.
        replicas: per model, every copy ``(worker, tier)`` (the first is ``placement``'s).
        keep_warm: models planned HOT that stay HOT (they get a keep-warm ping).
        keep_warm_on: per model in ``keep_warm``, the workers whose HOT copy stays.
        unplaced: models that wanted a tier but fit nowhere.
        short_replicas: models that got fewer HOT copies than they wanted (room).
        assigned: per live worker, its planned ``(model, tier)`` copies in the order they were
            placed (warmest tier first, then rank): the order a joining worker warms them in.
    """

    actions: dict[str, list[Action]] = field(default_factory=dict)
    placement: dict[str, tuple[str, Tier]] = field(default_factory=dict)
    replicas: dict[str, list[tuple[str, Tier]]] = field(default_factory=dict)
    keep_warm: list[str] = field(default_factory=list)
    keep_warm_on: dict[str, list[str]] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)
    short_replicas: list[str] = field(default_factory=list)
    assigned: dict[str, list[tuple[str, Tier]]] = field(default_factory=dict)


def replicas_wanted(demand: ModelDemand, live_workers: int, config: PlanConfig) -> int:
    """How many HOT copies ``demand`` wants: 1, or 2 for an eager model in ``prod`` with two
    or more live workers, or ``ceil(load / worker_capacity)`` when that is more; never more
    than the live workers or ``max_replicas``; always 1 in ``dev`` (it pre-warms nothing)."""
    if config.profile == "dev":
        return 1  # dev raises nothing, so it never adds a copy
    want = 1
    if demand.eager and config.profile == "prod":
        want = 2
    if config.worker_capacity > 0 and demand.load > config.worker_capacity:
        want = max(want, math.ceil(demand.load / config.worker_capacity))
    return max(1, min(want, live_workers, config.max_replicas))


def plan(demands: list[ModelDemand], workers: list[WorkerState],
         costs: dict[str, ModelCosts], config: PlanConfig | None = None) -> Plan:
    """Place models on workers' tiers and return the actions that get there.

    Args:
        demands: one prediction per model (from a policy's :class:`Decision`).
        workers: every known worker, alive or not, with its budgets and current tiers.
        costs: per model its size and seconds to HOT from each tier.
        config: profile, clock and hysteresis settings (defaults when None).

    Returns:
        The :class:`Plan`.

    Raises:
        SchedulerError: a demand names a model without costs, or two workers share a name.
    """
    cfg = config or PlanConfig()
    if len({w.name for w in workers}) != len(workers):
        raise SchedulerError("two workers share a name; worker names must be unique")
    for d in demands:
        if d.model not in costs:
            raise SchedulerError(
                f"no costs for model {d.model!r}; pass its size and load times in costs"
            )
    live = [w for w in workers if w.alive]
    current = {w.name: {m: policy_tier(t) for m, t in w.tiers.items()} for w in live}
    room = {w.name: Room(w.budgets()) for w in live}
    placement: dict[str, tuple[str, Tier]] = {}
    unplaced: list[str] = []

    # Who holds each model, warmest first (ties: the workers' order).
    holders: dict[str, list[tuple[str, Tier]]] = {}
    for w in live:
        for model, tier in current[w.name].items():
            holders.setdefault(model, []).append((w.name, tier))
    for held_by in holders.values():
        held_by.sort(key=lambda x: _RANK[x[1]])
    since_of = {(w.name, m): t for w in workers for m, t in w.placed_at_min.items()}
    held_since = {(w.name, m): t for w in workers for m, t in w.held_since_s.items()}
    index = {w.name: i for i, w in enumerate(live)}

    def where(model: str) -> tuple[str, Tier] | None:
        held = holders.get(model)
        return held[0] if held else None

    def target(d: ModelDemand) -> Tier:
        held = where(d.model)
        want = Tier.HOT if d.eager and cfg.profile == "prod" else policy_tier(d.tier)
        if cfg.profile == "dev":
            # Cold profile: never raise a model; only keep (or lower) what requests loaded.
            want = Tier.REMOTE if held is None else TIER_ORDER[max(_RANK[want], _RANK[held[1]])]
        return want

    targets = {d.model: target(d) for d in demands}
    by_model = {d.model: d for d in demands}
    copies: dict[str, list[tuple[str, Tier]]] = {}
    assigned: dict[str, list[tuple[str, Tier]]] = {w.name: [] for w in live}
    short: list[str] = []
    for tier in _PLACED_TIERS:
        colder = TIER_ORDER[_RANK[tier] + 1]

        def score(entry: tuple[ModelDemand, int]) -> tuple[int, int, int, int, float]:
            d, copy = entry
            c = costs[d.model]
            value = c.value_per_byte(tier, max(d.arrival_prob, 1e-12), colder)
            held = where(d.model)
            pinned = 0
            if held is not None and _RANK[held[1]] <= _RANK[tier]:
                value *= cfg.replace_margin
                since = since_of.get((held[0], d.model))
                if since is not None and cfg.now_min - since < cfg.min_residency_min:
                    pinned = 1
            # First copies of the eager and the expected models, then eager replicas, then
            # the rest; within each, pinned models, then value per byte.
            eager = d.eager and cfg.profile == "prod"
            first = copy == 0
            return (int(eager or (d.expected and first)), int(first), int(eager), pinned, value)

        wanting = [by_model[m] for m, t in targets.items()
                   if m not in placement and _RANK[t] <= _RANK[tier]]
        entries = [(d, k) for d in wanting
                   for k in range(replicas_wanted(d, len(live), cfg) if tier == Tier.HOT else 1)]
        # The workers by free room at this tier, most first (a max-heap with lazy updates:
        # an entry whose room changed since it was pushed is dropped when popped).
        heap = [(-room[w.name].free(tier), index[w.name], w.name) for w in live]
        heapq.heapify(heap)

        def most_room(size: int, taken: set[str]) -> str | None:
            aside, found = [], None
            while heap:
                key_free, i, name = heap[0]
                if -key_free != room[name].free(tier):
                    heapq.heappop(heap)  # stale; a fresh entry was pushed when it changed
                    continue
                if name in taken:
                    aside.append(heapq.heappop(heap))
                    continue
                found = name if room[name].fits(size, tier) else None
                break  # the most room of all: if it does not fit there, it fits nowhere
            for item in aside:
                heapq.heappush(heap, item)
            return found

        for d, copy in sorted(entries, key=score, reverse=True):
            if copy > 0 and d.model not in placement:
                continue  # no first copy: no replica either
            size = costs[d.model].size_bytes
            taken = {w for w, _ in copies.get(d.model, [])}
            # Where it is already (warmest first, then the oldest copy, then most room), else
            # the most room.
            held_here = [w for w, _ in holders.get(d.model, ()) if w not in taken]
            if len(held_here) > 1:
                held_here.sort(key=lambda w: (_RANK[current[w][d.model]], held_since.get((w, d.model), math.inf),
                                              -room[w].free(tier), index[w]))
            chosen = next((w for w in held_here if room[w].fits(size, tier)), None)
            if chosen is None:
                chosen = most_room(size, taken)
            if chosen is not None:
                room[chosen].place(size, tier)
                heapq.heappush(heap, (-room[chosen].free(tier), index[chosen], chosen))
                copies.setdefault(d.model, []).append((chosen, tier))
                assigned[chosen].append((d.model, tier))
                placement.setdefault(d.model, (chosen, tier))
            else:
                if copy > 0:
                    short.append(d.model)
                elif tier == Tier.DISK:
                    unplaced.append(d.model)
    result = _actions(live, current, copies, unplaced, cfg)
    result.placement = placement
    result.assigned = assigned
    result.short_replicas = sorted(set(short))
    return result



def _actions(live: list[WorkerState], current: dict[str, dict[str, Tier]],
             copies: dict[str, list[tuple[str, Tier]]], unplaced: list[str],
             cfg: PlanConfig) -> Plan:
    out = Plan(replicas=copies, unplaced=sorted(set(unplaced)))
    planned = {(worker, model): tier for model, held in copies.items() for worker, tier in held}
    # Per worker, what frees room comes first (drops, demotions), then keeps, then raises:
    # the worker then finds the room a raise needs already free, and never picks a victim.
    kinds = ("drop", "demote", "keep", "prewarm")
    by_kind: dict[str, dict[str, list[Action]]] = {w.name: {k: [] for k in kinds} for w in live}
    for w in live:
        for model in sorted(current[w.name]):
            if (w.name, model) not in planned:
                by_kind[w.name]["drop"].append(Action("drop", model, Tier.REMOTE))
    for (worker, model), tier in sorted(planned.items(), key=lambda x: (x[0][1], x[0][0])):
        was = current[worker].get(model)
        if was is None or _RANK[tier] < _RANK[was]:
            by_kind[worker]["prewarm"].append(Action("prewarm", model, tier))
        elif tier == was:
            by_kind[worker]["keep"].append(Action("keep", model, tier))
            if tier == Tier.HOT:
                out.keep_warm_on.setdefault(model, []).append(worker)
        else:
            by_kind[worker]["demote"].append(Action("demote", model, tier))
    out.keep_warm = sorted(out.keep_warm_on)
    out.actions = {w: [a for k in kinds for a in lists[k]] for w, lists in by_kind.items()}
    return out
