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
- a model stays on the worker where it already is when that worker has room.

Each model is placed on at most one live worker. A dead worker's models count as not placed
anywhere, so they go to live workers. Budgets follow the worker's own rule
(:mod:`warmstart.workers.capacity`): a model counts against the budget of every level at or
below its tier (HOT: device, host and cache; HOST: host and cache; DISK: cache), so the
planned state never exceeds a budget the way the worker counts it, and carrying the plan out
never makes a worker demote a model the plan keeps. Per worker, demotions and drops are listed
before pre-warms, so the room is freed before it is taken. Profile ``dev`` is cold: the
planner orders no pre-warm, only keeps, demotes and drops what is already loaded; ``prod``
pre-warms.
"""

from __future__ import annotations

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
    """

    model: str
    tier: Tier
    arrival_prob: float = 0.0
    eager: bool = False


@dataclass(frozen=True)
class WorkerState:
    """One worker as the planner sees it.

    Attributes:
        name: the worker's name.
        device_budget_bytes, host_budget_bytes, disk_budget_bytes: budgets per tier.
        tiers: the current tier of each model it holds (``Tier`` or its value).
        placed_at_min: minute each held model reached its current tier (for min residency).
        alive: False when its heartbeat expired; its models are re-placed elsewhere.
    """

    name: str
    device_budget_bytes: int
    host_budget_bytes: int
    disk_budget_bytes: int
    tiers: dict[str, Tier | str] = field(default_factory=dict)
    placed_at_min: dict[str, int] = field(default_factory=dict)
    alive: bool = True

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
    """

    profile: Literal["dev", "prod"] = "prod"
    now_min: int = 0
    replace_margin: float = 1.5
    min_residency_min: int = 5


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
        placement: per model, ``(worker, tier)`` in the planned state.
        keep_warm: models planned HOT that stay HOT (they get a keep-warm ping).
        unplaced: models that wanted a tier but fit nowhere.
    """

    actions: dict[str, list[Action]] = field(default_factory=dict)
    placement: dict[str, tuple[str, Tier]] = field(default_factory=dict)
    keep_warm: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)


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

    def where(model: str) -> tuple[str, Tier] | None:
        held = [(w, cur[model]) for w, cur in current.items() if model in cur]
        return min(held, key=lambda x: _RANK[x[1]]) if held else None

    def target(d: ModelDemand) -> Tier:
        held = where(d.model)
        want = Tier.HOT if d.eager and cfg.profile == "prod" else policy_tier(d.tier)
        if cfg.profile == "dev":
            # Cold profile: never raise a model; only keep (or lower) what requests loaded.
            want = Tier.REMOTE if held is None else TIER_ORDER[max(_RANK[want], _RANK[held[1]])]
        return want

    targets = {d.model: target(d) for d in demands}
    by_model = {d.model: d for d in demands}
    for tier in _PLACED_TIERS:
        colder = TIER_ORDER[_RANK[tier] + 1]

        def score(d: ModelDemand) -> tuple[int, int, float]:
            c = costs[d.model]
            value = c.value_per_byte(tier, max(d.arrival_prob, 1e-12), colder)
            held = where(d.model)
            pinned = 0
            if held is not None and _RANK[held[1]] <= _RANK[tier]:
                value *= cfg.replace_margin
                since = _placed_since(workers, held[0], d.model)
                if since is not None and cfg.now_min - since < cfg.min_residency_min:
                    pinned = 1
            eager = int(d.eager and cfg.profile == "prod")
            return (eager, pinned, value)

        wanting = [by_model[m] for m, t in targets.items()
                   if m not in placement and _RANK[t] <= _RANK[tier]]
        for d in sorted(wanting, key=score, reverse=True):
            size = costs[d.model].size_bytes
            held = where(d.model)
            order = sorted(live, key=lambda w: (held is None or w.name != held[0],
                                                -room[w.name].free(tier)))
            for w in order:
                if room[w.name].fits(size, tier):
                    room[w.name].place(size, tier)
                    placement[d.model] = (w.name, tier)
                    break
            else:
                if tier == Tier.DISK:
                    unplaced.append(d.model)
    return _actions(live, current, placement, unplaced, cfg)


def _placed_since(workers: list[WorkerState], worker: str, model: str) -> int | None:
    for w in workers:
        if w.name == worker:
            return w.placed_at_min.get(model)
    return None


def _actions(live: list[WorkerState], current: dict[str, dict[str, Tier]],
             placement: dict[str, tuple[str, Tier]], unplaced: list[str],
             cfg: PlanConfig) -> Plan:
    out = Plan(placement=placement, unplaced=sorted(set(unplaced)))
    # Per worker, what frees room comes first (drops, demotions), then keeps, then raises:
    # the worker then finds the room a raise needs already free, and never picks a victim.
    kinds = ("drop", "demote", "keep", "prewarm")
    by_kind: dict[str, dict[str, list[Action]]] = {w.name: {k: [] for k in kinds} for w in live}
    for w in live:
        for model in sorted(current[w.name]):
            if placement.get(model, ("", None))[0] != w.name:
                by_kind[w.name]["drop"].append(Action("drop", model, Tier.REMOTE))
    for model, (worker, tier) in sorted(placement.items()):
        was = current[worker].get(model)
        if was is None or _RANK[tier] < _RANK[was]:
            by_kind[worker]["prewarm"].append(Action("prewarm", model, tier))
        elif tier == was:
            by_kind[worker]["keep"].append(Action("keep", model, tier))
            if tier == Tier.HOT:
                out.keep_warm.append(model)
        else:
            by_kind[worker]["demote"].append(Action("demote", model, tier))
    out.actions = {w: [a for k in kinds for a in lists[k]] for w, lists in by_kind.items()}
    return out
