"""The beat: each tick reads traffic and worker state from Redis, runs the policy and the
planner (pure code), and sends the difference as tasks to each worker's control queue.

One tick:

1. take (or keep) the leader lease — only one beat acts at a time, however many run
   (:mod:`warmstart.scheduler.lease`);
2. read the catalog of published models (:mod:`warmstart.scheduler.catalog`: while the store
   cannot be read, the last catalog, plus what the workers hold, and one warning);
3. read alive and dead workers (missed heartbeats) and what each holds at which tier;
4. feed each model's newly completed traffic minutes through the policy, whose state is
   kept in Redis as JSON, to get its demand for the next minute; a model that a request
   just warmed keeps at least its policy's first-gap hold (:mod:`warmstart.scheduler.holds`);
5. plan placements by value per byte within each worker's budgets (dead workers' models
   are placed on live ones), with hysteresis;
6. publish each worker's assignment in the planner's order (a joining worker warms it
   before anything else, :mod:`warmstart.workers.joining`), then send ``prewarm`` /
   ``demote`` to the workers concerned (not again while one is in flight), keep-warm pings
   for models that stay HOT, and a health-check fan-out;
7. advance each rollout in progress by one step (:mod:`warmstart.scheduler.rollout`).

Beside the ticks, :meth:`BeatScheduler.run` runs a
:class:`~warmstart.scheduler.queue_watch.QueueWatcher`: every request pushed onto an
``infer.*`` queue, from any client, is recorded as an arrival, wakes a worker when none
serves its model, or is answered with ``UnknownModelError`` when nobody published it.

Why not Celery's own beat: its entries only enqueue tasks for workers to run, whereas the
planner must run in one place, against one consistent reading of the cluster, under a lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from celery import Celery

from warmstart.infra.celery_app import (
    PREWARM_QUEUE,
    TASK_DEMOTE,
    TASK_HEALTH_CHECK,
    TASK_KEEP_WARM,
    TASK_PREWARM,
    control_queue,
    create_app,
)
from warmstart.infra.errors import WarmstartError
from warmstart.infra.redis_client import connect, key, redis_errors
from warmstart.infra.settings import Settings
from warmstart.scheduler.catalog import Catalog
from warmstart.scheduler.costs import ModelCosts, default_to_hot_s
from warmstart.scheduler.holds import first_gap_hold, needs_hold, warmer
from warmstart.scheduler.lease import Lease
from warmstart.scheduler.observe import BeatMetrics, BeatProbes
from warmstart.scheduler.scale_signal import ScaleSignal
from warmstart.scheduler.planner import ModelDemand, Plan, PlanConfig, WorkerState, plan
from warmstart.scheduler.policies import ModelContext, TrafficState, make_policy
from warmstart.infra.tiers import Tier, policy_tier
from warmstart.scheduler.policies.base import Decision
from warmstart.scheduler.queue_watch import QueueWatcher
from warmstart.scheduler.rollout import RolloutDriver
from warmstart.scheduler.traffic import TrafficRecorder
from warmstart.snapshot.stores import open_store
from warmstart.workers.registry import WorkerRegistry

log = logging.getLogger(__name__)


#: Each tier's step towards HOT, and the worker transitions that make it up.
_STEPS = (("HOST", ("HOST>DEVICE", "DEVICE>HOT")), ("DISK", ("DISK>HOST",)), ("REMOTE", ("REMOTE>DISK",)))


def to_hot_from_measured(measured: dict[str, float], size_bytes: int) -> dict[str, float]:
    """Seconds to HOT from each tier: each step as a worker measured it (``"DISK>HOST"`` …),
    or, where it was never measured, the cost model's default for the model's size."""
    default = default_to_hot_s(size_bytes)
    result, previous = {"HOT": 0.0}, "HOT"
    for tier, edges in _STEPS:
        if all(e in measured for e in edges):
            step = sum(measured[e] for e in edges)
        else:
            step = default[tier] - default[previous]
        result[tier] = result[previous] + step
        previous = tier
    return result


@dataclass
class TickReport:
    """What one tick decided and sent (for logs, the demo and tests)."""

    leader: bool
    now_min: int = 0
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent: list[dict[str, Any]] = field(default_factory=list)
    dead_workers: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)
    store_outage: str | None = None  # why the catalog is the last one read, when it is
    rollouts: dict[str, str] = field(default_factory=dict)  # model -> phase, of rollouts in progress


@dataclass
class ClusterView:
    """What the workers report, as one tick reads it from the registry."""

    workers: list[WorkerState]
    dead: list[str]
    alive: dict[str, dict[str, Any]]
    #: Model -> its size as a worker reports it (for planning when the store is unreadable).
    sizes: dict[str, int] = field(default_factory=dict)
    #: Model -> when it became HOT by a lazy (request) warm-up on a live worker (the latest).
    warmed_at: dict[str, float] = field(default_factory=dict)
    #: Model -> seconds one request takes once warm (the slowest a worker reports).
    service_s: dict[str, float] = field(default_factory=dict)


class BeatScheduler:
    """The scheduler. ``tick(now_s)`` is one planning round; ``run()`` ticks forever."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or create_app(settings)
        self.client = connect(settings.redis_url)
        self.registry = WorkerRegistry(self.client)
        self.traffic = TrafficRecorder(self.client, settings.traffic_retention_min, settings.traffic_minute_s)
        self.policy = make_policy(settings.policy)
        self.store = open_store(settings)
        self.catalog_reader = Catalog(self.store, settings.catalog_ttl_s)
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lease = Lease(self.client, key("beat", "leader"), self.id)
        # (worker, model) -> (target tier, sent at, the tier a demotion was decided on)
        self._in_flight: dict[tuple[str, str], tuple[str, float, str | None]] = {}
        self._placed_at: dict[tuple[str, str], tuple[str, int, float]] = {}  # tier, since (minute, s)
        self._warmed_at: dict[str, float] = {}  # model -> latest request warm-up seen (holds.py)
        self._last_keep_warm = -1e9
        self._last_health = -1e9
        self._stop = threading.Event()
        self.probes = BeatProbes(settings, BeatMetrics(self.id))  # metrics and probes (observe.py)
        self.scale = ScaleSignal(settings, self.client, self.traffic, self.probes.metrics.desired_workers)
        self.rollouts = RolloutDriver(settings, self.client, self.app, self.registry)  # scheduler/rollout.py
        self._leader_until = 0.0
        #: Sees every request on the ``infer.*`` queues (started by :meth:`run`).
        self.watcher = QueueWatcher(
            self.client, self.app, self.registry, self.traffic, self.store,
            claim_s=settings.prewarm_claim_s, poll_s=settings.queue_poll_s, is_leader=self.is_leader,
        )  # fmt: skip

    # --- leadership -----------------------------------------------------------------------

    def lease_ttl_s(self) -> float:
        """How long the lease (and the planner mark that goes with it) outlives a tick."""
        return max(3 * self.settings.plan_interval_s, 5.0)

    def acquire_lease(self) -> bool:
        """True while this beat is the one that acts (lease renewed on every tick)."""
        ttl_s = self.lease_ttl_s()
        held = self.lease.acquire(int(ttl_s * 1000))
        self._leader_until = time.monotonic() + ttl_s if held else 0.0
        return held

    def is_leader(self) -> bool:
        """True while the lease this beat took at its last tick has not expired."""
        return time.monotonic() < self._leader_until

    def release_lease(self) -> None:
        """Give the lease up, if this beat still holds it (compare and delete)."""
        self._leader_until = 0.0
        self.lease.release()
        self.registry.retire_planner(self.id)

    # --- inputs ---------------------------------------------------------------------------

    def catalog(self) -> dict[str, int]:
        """Published models and their sizes in bytes (read again every ``catalog_ttl_s``;
        the last read while the store cannot be read)."""
        return self.catalog_reader.sizes()

    def demand(self, model: str, context: ModelContext, now_min: int) -> Decision:
        """Feed the completed minutes since the last tick through the policy; its decision."""
        return self._demand(model, context, now_min)[0]

    def _demand(self, model: str, context: ModelContext, now_min: int) -> tuple[Decision, TrafficState]:
        state_key = key("policy", self.policy.name, model)
        with redis_errors(self.client, f"reading the policy state of {model!r}"):
            raw = self.client.get(state_key)
        stored = json.loads(raw) if raw else None
        state = TrafficState.from_dict(stored["state"]) if stored else TrafficState()
        decision = Decision(Tier.parse(stored["decision"]["tier"]), stored["decision"]["arrival_prob"]) if stored else None
        start = now_min - self.settings.beat_catchup_min
        if state.last_observed_min is not None:
            start = max(start, state.last_observed_min + 1)
        if start < now_min:
            counts = self.traffic.minute_counts(model, start, now_min)
            step = Decision(Tier.REMOTE, 0.0)  # replaced: the range is not empty
            for minute in range(start, now_min):
                step, state = self.policy.step(context, state, minute, counts.get(minute, 0))
            decision = step
            record = {"state": state.to_dict(), "decision": {"tier": decision.tier.name, "arrival_prob": decision.arrival_prob}}
            with redis_errors(self.client, f"saving the policy state of {model!r}"):
                self.client.set(state_key, json.dumps(record))
        return decision or Decision(Tier.REMOTE, 0.0), state

    def worker_states(self, now_min: int, now_s: float | None = None) -> ClusterView:
        """The workers as the planner sees them, and what they report of their models."""
        now_s = time.time() if now_s is None else now_s
        alive, dead = self.registry.workers()
        view = ClusterView([], dead, alive)
        for name in sorted(alive) + dead:
            info = alive.get(name, {})
            budgets = info.get("budgets", {})
            tiers: dict[str, str] = {}
            placed: dict[str, int] = {}
            held_since: dict[str, float] = {}
            for model, state in self.registry.models_of(name).items():
                if int(state.get("size_bytes") or 0) > 0:
                    view.sizes.setdefault(model, int(state["size_bytes"]))
                settled = state.get("settled_latency_ms")
                if isinstance(settled, (int, float)) and settled > 0:
                    view.service_s[model] = max(view.service_s.get(model, 0.0), float(settled) / 1000)
                if name in alive and _request_warmed(state):
                    view.warmed_at[model] = max(float(state["hot_at"]), view.warmed_at.get(model, 0.0))
                try:
                    tier = policy_tier(state.get("tier", "")).name
                except ValueError:
                    log.warning("worker %s reports model %s at unknown tier %r; ignored", name, model, state.get("tier"))
                    continue
                if tier in ("HOT", "HOST", "DISK"):
                    tiers[model] = tier
                    seen = self._placed_at.get((name, model))
                    if seen is None or seen[0] != tier:
                        seen = self._placed_at[(name, model)] = (tier, now_min, now_s)
                    placed[model], held_since[model] = seen[1], seen[2]
            view.workers.append(
                WorkerState(
                    name=name,
                    device_budget_bytes=int(budgets.get("device_bytes", 0)),
                    host_budget_bytes=int(budgets.get("host_bytes", 0)),
                    disk_budget_bytes=int(budgets.get("cache_bytes", 0)),
                    tiers=tiers,  # type: ignore[arg-type]
                    placed_at_min=placed,
                    held_since_s=held_since,
                    alive=name in alive and name not in self.scale.leaving,  # draining: models go elsewhere
                )
            )
        return view

    # --- one tick -------------------------------------------------------------------------

    def tick(self, now_s: float | None = None) -> TickReport:
        """One planning round at wall-clock ``now_s`` (default: now)."""
        now_s = time.time() if now_s is None else now_s
        if not self.acquire_lease():
            return TickReport(leader=False)
        now_min = self.traffic.minute_of(now_s)
        report = TickReport(leader=True, now_min=now_min)
        catalog = dict(self.catalog())
        self.scale.refresh_leaving()
        view = self.worker_states(now_min, now_s)
        workers, dead, alive = view.workers, view.dead, view.alive
        report.dead_workers = dead
        if not self.catalog_reader.current:
            # The store cannot be read: what the workers hold is published too (or was), and
            # must not be dropped for want of a catalog.
            report.store_outage = self.catalog_reader.outage or "the store was never read"
            for model, size in view.sizes.items():
                catalog.setdefault(model, size)
        self.watcher.set_catalog(catalog, current=self.catalog_reader.current)
        # A request-warmed model keeps its hold when the worker that warmed it hands it over
        # and leaves (the copy it handed over to was warmed by a plan, not by the request).
        for model, at in view.warmed_at.items():
            self._warmed_at[model] = max(at, self._warmed_at.get(model, 0.0))
        self._warmed_at = {m: at for m, at in self._warmed_at.items() if m in catalog}
        reference = int(sum(catalog.values()) / len(catalog)) if catalog else None
        demands: list[ModelDemand] = []
        costs: dict[str, ModelCosts] = {}
        eager = set(self.settings.eager_models)
        for model, size in catalog.items():
            to_hot = to_hot_from_measured(self.registry.transition_costs(model), size)
            costs[model] = ModelCosts(model, size, to_hot)
            context = ModelContext(model=model, to_hot_s=to_hot, size_bytes=size, reference_bytes=reference)
            decision, state = self._demand(model, context, now_min)
            report.decisions[model] = {}
            if model in self._warmed_at:
                decision = self._request_hold(decision, state, context, self._warmed_at[model], now_min, report)
            load = _load(state, now_min, self.settings.traffic_minute_s, view.service_s.get(model, 0.0))
            demands.append(ModelDemand(model, decision.tier, decision.arrival_prob, eager=model in eager, load=load))
            report.decisions[model].update(tier=decision.tier.name, arrival_prob=round(decision.arrival_prob, 4))
        expected = self.scale.prepare(catalog, costs, now_min)  # the daily pattern over the lead time
        if self.settings.profile == "prod" and expected:
            demands = [self._pattern_prewarm(d, report) if d.model in expected else d for d in demands]
        result = plan(demands, workers, costs, PlanConfig(profile=self.settings.profile, now_min=now_min))
        self._rescue_stranded(catalog, report)
        # What each worker should hold, for a worker that joins to warm in this order first
        # (workers/joining.py); the key expires with the lease, so a worker that starts
        # without a planner warms its own eager list instead of waiting.
        self.registry.publish_assignments(
            {w: [(m, t.name) for m, t in entries] for w, entries in result.assigned.items()},
            self.id, self.lease_ttl_s())
        report.unplaced = list(result.unplaced)
        self._dispatch(result, workers, report, now_s)
        for name in dead:
            log.warning("worker %s missed its heartbeats: its models were placed elsewhere", name)
            self.registry.forget_worker(name)
        self._forget(set(dead), now_s)
        self._fan_out(result, alive, report)
        report.rollouts = {r["model"]: r["phase"] for r in self.rollouts.tick()}
        self.scale.update(view, catalog, demands, costs, now_min)  # desired_workers (scale_signal.py)
        return report

    def _request_hold(self, decision: Decision, state: TrafficState, context: ModelContext,
                      hot_at: float, now_min: int, report: TickReport) -> Decision:
        """At least the policy's first-gap hold for a model a request made HOT at ``hot_at``,
        while the policy has not seen that request (see :mod:`warmstart.scheduler.holds`)."""
        hot_min = self.traffic.minute_of(hot_at)
        if not needs_hold(state, hot_min):
            return decision
        hold = first_gap_hold(self.policy, context, hot_min, now_min)
        if warmer(decision, hold) is decision:
            return decision
        report.decisions[context.model]["request_hold"] = True
        return replace(hold, reason=f"request-hold:{hold.reason}")

    @staticmethod
    def _pattern_prewarm(demand: ModelDemand, report: TickReport) -> ModelDemand:
        """HOT ahead of the arrivals the earlier days saw at this time (``prod``): the workers
        the scaling signal adds for them join with the model HOT (``scale_signal.prepare``)."""
        report.decisions[demand.model].update(tier=Tier.HOT.name, pattern_prewarm=True)
        return replace(demand, tier=Tier.HOT, arrival_prob=max(demand.arrival_prob, 0.5), expected=True)

    def _dispatch(self, result: Plan, workers: list[WorkerState], report: TickReport, now_s: float) -> None:
        current = {w.name: {m: Tier.parse(t).name for m, t in w.tiers.items()} for w in workers if w.alive}
        timeout_s = max(60.0, 6 * self.settings.plan_interval_s)  # as in _forget
        for worker, actions in result.actions.items():
            for action in actions:
                if action.kind == "keep":
                    continue
                if action.kind in ("drop", "demote") and (worker, action.model) in self.rollouts.pinned:
                    continue  # a rollout's canary compares with this copy (scheduler/rollout.py)
                target = action.tier.name if action.kind != "drop" else "REMOTE"
                was = current.get(worker, {}).get(action.model, "REMOTE")
                if was == target:
                    continue
                task = TASK_PREWARM if action.kind == "prewarm" else TASK_DEMOTE
                # A demotion names the tier this plan saw: a model that a request warms
                # meanwhile (its lazy warm-up was under way) is left as it is by the worker
                # (ModelPool.demote), so a demotion seen from another tier is a new one.
                seen = was if task == TASK_DEMOTE else None
                pending = self._in_flight.get((worker, action.model))
                if pending and pending[0] == target and pending[2] == seen and now_s - pending[1] < timeout_s:
                    continue  # already sent; the worker is on it
                kwargs = {"model": action.model, "tier": target}
                if seen is not None:
                    kwargs["seen"] = seen
                self.app.send_task(task, kwargs=kwargs, queue=control_queue(worker))
                self._in_flight[(worker, action.model)] = (target, now_s, seen)
                report.sent.append({"task": task, "worker": worker, **kwargs})

    def _forget(self, dead: set[str], now_s: float) -> None:
        """Drop bookkeeping of dead workers and of sends that are long done."""
        horizon = max(60.0, 6 * self.settings.plan_interval_s)
        self._placed_at = {k: v for k, v in self._placed_at.items() if k[0] not in dead}
        self._in_flight = {
            k: v for k, v in self._in_flight.items() if k[0] not in dead and now_s - v[1] < horizon
        }

    def _rescue_stranded(self, catalog: dict[str, int], report: TickReport) -> None:
        """A safety net for scale from zero: requests waiting for a model that no live worker
        serves (its worker died, or demoted it) get a lazy pre-warm any worker may take."""
        for model in catalog:
            if self.registry.queued_requests(model) and not self.registry.hot_workers(model):
                claim = self.registry.claim_prewarm(model, self.settings.prewarm_claim_s)
                if claim:
                    # The claim's token is the task's id: the pre-warm releases its own claim.
                    self.app.send_task(TASK_PREWARM, kwargs={"model": model, "tier": "HOT", "lazy": True},
                                       queue=PREWARM_QUEUE, task_id=claim)
                    report.sent.append({"task": TASK_PREWARM, "worker": None, "model": model, "tier": "HOT"})

    def _fan_out(self, result: Plan, alive: dict[str, dict[str, Any]], report: TickReport) -> None:
        now = time.monotonic()
        if now - self._last_keep_warm >= self.settings.keep_warm_interval_s:
            self._last_keep_warm = now
            for model in result.keep_warm:
                for worker in result.keep_warm_on.get(model, []):
                    if worker in alive:
                        self.app.send_task(TASK_KEEP_WARM, kwargs={"model": model}, queue=control_queue(worker))
                        report.sent.append({"task": TASK_KEEP_WARM, "worker": worker, "model": model})
        if now - self._last_health >= self.settings.health_interval_s:
            self._last_health = now
            for worker in alive:
                self.app.send_task(TASK_HEALTH_CHECK, kwargs={}, queue=control_queue(worker))
                report.sent.append({"task": TASK_HEALTH_CHECK, "worker": worker})

    # --- the loop -------------------------------------------------------------------------

    def run(self, max_ticks: int | None = None) -> None:
        """Tick every ``plan_interval_s`` until :meth:`stop` (or ``max_ticks``)."""
        ticks = 0
        watching = False
        try:
            while not self._stop.is_set() and (max_ticks is None or ticks < max_ticks):
                started = time.monotonic()
                report = None
                try:
                    report = self.tick()
                    if not watching:
                        self.watcher.start()  # after the first tick: it needs the catalog
                        watching = True
                    if report.leader and report.sent:
                        log.info("tick %d: sent %s", report.now_min, report.sent)
                except WarmstartError as e:  # Redis or the store down: try again next tick
                    log.error("beat tick failed: %s", e)
                self.probes.ticked(time.monotonic() - started, report is not None, report.leader if report else None)
                ticks += 1
                self._stop.wait(max(0.0, self.settings.plan_interval_s - (time.monotonic() - started)))
        finally:
            if watching:
                self.watcher.stop()
            try:
                self.release_lease()
            except WarmstartError:
                pass

    def stop(self) -> None:
        self._stop.set()


def _load(state: TrafficState, now_min: int, minute_s: float, service_s: float) -> float:
    """Busy seconds per second a model asks of its workers: arrivals per second in the last
    completed minute × the seconds one request takes (0 until both are known)."""
    last = sum(count for minute, count in state.recent_arrivals if minute == now_min - 1)
    return last / minute_s * service_s if minute_s > 0 else 0.0


def _request_warmed(state: dict[str, Any]) -> bool:
    """True when a worker reports the model HOT from a lazy warm-up (requests were waiting),
    not from a planned pre-warm or a recovery: the pool publishes ``warmed_by_request``."""
    return state.get("tier") == "HOT" and state.get("hot_at") is not None and state.get("warmed_by_request") is True
