"""The common interface of the warm-up policies: tiers, per-model traffic state, decisions.

A policy is a pure object: :meth:`Policy.step` takes the context (model costs), the model's
:class:`TrafficState`, the current minute and that minute's arrival count, and returns the
:class:`Decision` for the *next* minute together with the new state. The clock is the
``now_min`` argument (whole minutes since an epoch; minute-of-day is ``now_min % 1440``), so
the simulator replays a trace and the live beat scheduler feeds wall-clock minutes through
the same code. The input state is never modified.

:class:`TrafficState` is plain data (ints and lists) so the live scheduler can keep it in
Redis as JSON (:meth:`TrafficState.to_dict` / :meth:`TrafficState.from_dict`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any

from warmstart.infra.errors import SchedulerError
from warmstart.infra.tiers import POLICY_TIERS, Tier

#: One-minute idle-time bins of the histogram: idle times of 0..239 minutes (4 hours).
IDLE_BINS = 240
MINUTES_PER_DAY = 1440
#: Idle times kept for the out-of-range predictor (bounded retention).
RECENT_IDLE_KEEP = 16
#: Minutes of per-minute arrival counts kept (bounded retention), for rates and the planner.
RECENT_ARRIVALS_MIN = 60


#: The tiers a policy decides among, warmest first (the one Tier enum is shared with workers).
TIER_ORDER = POLICY_TIERS


@dataclass
class TrafficState:
    """What the scheduler remembers about one model's traffic; JSON-ready plain data.

    Attributes:
        last_arrival_min: minute of the latest minute with arrivals, or None before any.
        first_observed_min: first minute fed to the state (start of the daily profile).
        last_observed_min: latest minute fed to the state.
        arrivals_total: invocations seen.
        active_minutes: minutes with at least one arrival.
        idle_hist: ``IDLE_BINS`` counts; bin ``k`` counts idle times of ``k`` whole minutes
            between two minutes with arrivals (consecutive minutes give 1).
        idle_oob: idle times of ``IDLE_BINS`` minutes or more (out of the histogram's range).
        recent_idle_min: the latest idle times of any length, oldest first.
        recent_arrivals: ``[minute, count]`` of minutes with arrivals in the last
            ``RECENT_ARRIVALS_MIN`` minutes.
        daily_hits: per minute-of-day, on how many days that minute had arrivals (empty until
            the first arrival, to keep idle models small).
        plan: the policy's own plan since the last arrival (JSON-ready), e.g. its windows.
    """

    last_arrival_min: int | None = None
    first_observed_min: int | None = None
    last_observed_min: int | None = None
    arrivals_total: int = 0
    active_minutes: int = 0
    idle_hist: list[int] = field(default_factory=lambda: [0] * IDLE_BINS)
    idle_oob: int = 0
    recent_idle_min: list[int] = field(default_factory=list)
    recent_arrivals: list[list[int]] = field(default_factory=list)
    daily_hits: list[int] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the state as JSON-ready plain data."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrafficState":
        """Rebuild a state from :meth:`to_dict` output.

        Raises:
            SchedulerError: the histogram has the wrong number of bins or a key is unknown.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SchedulerError(
                f"traffic state has unknown keys {sorted(unknown)}; it was written by another "
                "version of warmstart: drop the stored state to rebuild it from traffic"
            )
        state = cls(**{k: v for k, v in data.items()})
        if len(state.idle_hist) != IDLE_BINS:
            raise SchedulerError(
                f"traffic state idle_hist has {len(state.idle_hist)} bins, expected "
                f"{IDLE_BINS}; drop the stored state to rebuild it"
            )
        return state

    @property
    def idle_count(self) -> int:
        """Idle times observed, in range and out of range."""
        return sum(self.idle_hist) + self.idle_oob

    def days_observed(self) -> int:
        """Whole days between the first and the last observed minute."""
        if self.first_observed_min is None or self.last_observed_min is None:
            return 0
        return (self.last_observed_min - self.first_observed_min + 1) // MINUTES_PER_DAY


def observe(state: TrafficState, now_min: int, arrivals: int) -> TrafficState:
    """Record one minute of traffic and return the new state (``state`` is not modified).

    Args:
        state: the model's state before minute ``now_min``.
        now_min: the minute observed (whole minutes since the epoch).
        arrivals: requests that arrived during that minute (>= 0).

    Returns:
        The updated state; ``plan`` is carried over unchanged.

    Raises:
        SchedulerError: ``arrivals`` is negative or ``now_min`` goes back in time.
    """
    if arrivals < 0:
        raise SchedulerError(f"arrivals must be >= 0, got {arrivals} for minute {now_min}")
    if state.last_observed_min is not None and now_min <= state.last_observed_min:
        raise SchedulerError(
            f"minute {now_min} is not after the last observed minute "
            f"{state.last_observed_min}; feed minutes in order, once each"
        )
    # A shallow copy (the lists are replaced, never changed in place, below): much cheaper
    # than dataclasses.replace, which the simulator would pay every model-minute.
    new = object.__new__(TrafficState)
    new.__dict__.update(state.__dict__)
    if new.first_observed_min is None:
        new.first_observed_min = now_min
    new.last_observed_min = now_min
    if arrivals == 0:
        return new
    new.arrivals_total = state.arrivals_total + arrivals
    new.active_minutes = state.active_minutes + 1
    if state.last_arrival_min is not None:
        idle_min = now_min - state.last_arrival_min
        if idle_min < IDLE_BINS:
            new.idle_hist = list(state.idle_hist)
            new.idle_hist[idle_min] += 1
        else:
            new.idle_oob = state.idle_oob + 1
        new.recent_idle_min = (state.recent_idle_min + [idle_min])[-RECENT_IDLE_KEEP:]
    new.last_arrival_min = now_min
    horizon = now_min - RECENT_ARRIVALS_MIN
    new.recent_arrivals = [p for p in state.recent_arrivals if p[0] > horizon] + [[now_min, arrivals]]
    hits = list(state.daily_hits) if state.daily_hits else [0] * MINUTES_PER_DAY
    hits[now_min % MINUTES_PER_DAY] += 1
    new.daily_hits = hits
    return new


@dataclass(frozen=True)
class ModelContext:
    """What a policy may know about a model besides its traffic.

    Attributes:
        model: the model's name (for messages).
        to_hot_s: seconds to reach HOT from each tier (tier-name keys); None = unknown,
            the policy then uses the cost model's relative defaults.
        size_bytes: the model's size in bytes, or None when unknown.
        reference_bytes: the typical model size of the fleet (its mean), against which a
            cold start is valued; None = this model's own size.
    """

    model: str = ""
    to_hot_s: dict[str, float] | None = None
    size_bytes: int | None = None
    reference_bytes: int | None = None


@dataclass(frozen=True)
class Decision:
    """Where a model should be during the next minute.

    Attributes:
        tier: HOT (loaded and serving), HOST (pages resident, cheap to raise), DISK (in the
            local cache) or REMOTE (may be dropped everywhere).
        arrival_prob: the policy's probability of at least one arrival in the next minute
            (0..1), used to rank models by value when budgets are short.
        next_arrival_min: predicted minute of the next arrival, or None when unknown.
        reason: a short tag saying which rule decided (for logs and tests).
    """

    tier: Tier
    arrival_prob: float = 0.0
    next_arrival_min: float | None = None
    reason: str = ""


class Policy(ABC):
    """A warm-up policy. Subclasses implement :meth:`replan` and :meth:`decide`."""

    name: str = "policy"

    def step(self, context: ModelContext, state: TrafficState, now_min: int,
             arrivals: int) -> tuple[Decision, TrafficState]:
        """Record minute ``now_min`` and decide the model's tier for minute ``now_min + 1``.

        Args:
            context: the model's costs (may be empty).
            state: the model's traffic state before ``now_min`` (not modified).
            now_min: the minute that just ended (whole minutes since the epoch).
            arrivals: requests that arrived during ``now_min``.

        Returns:
            ``(decision, new_state)``.

        Raises:
            SchedulerError: invalid arrivals or minutes out of order.
        """
        new = observe(state, now_min, arrivals)
        if arrivals > 0:
            new.plan = self.replan(context, new, now_min)
        return self.decide(context, new, now_min), new

    def replan(self, context: ModelContext, state: TrafficState, now_min: int) -> dict[str, Any]:
        """Return the plan (JSON-ready) for the idle period that starts after an arrival."""
        return {}

    @abstractmethod
    def decide(self, context: ModelContext, state: TrafficState, now_min: int) -> Decision:
        """Return the decision for minute ``now_min + 1`` from an up-to-date state."""


def empirical_hazard(state: TrafficState, idle_min: int) -> float:
    """Probability that the next arrival comes ``idle_min`` minutes after the last one, given
    none came before (discrete hazard from the idle-time histogram; 0 when nothing is known).
    """
    if idle_min <= 0 or idle_min >= IDLE_BINS:
        return 0.0
    at_risk = sum(state.idle_hist[idle_min:]) + state.idle_oob
    return state.idle_hist[idle_min] / at_risk if at_risk else 0.0
