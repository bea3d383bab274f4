"""The one capacity rule: which budgets a model at a tier fills, and what still fits a worker.

A worker has three budgets, one per level: the device (``DEVICE``), host memory (``HOST``) and
the local snapshot cache (``DISK``). A model's bytes count against the budget of every level
at or below its own tier:

=========== ====== ==== =====
tier        device host cache
=========== ====== ==== =====
HOT, DEVICE yes    yes  yes
HOST               yes  yes
DISK                    yes
REMOTE
=========== ====== ==== =====

A model on the device keeps its host copy (on a GPU the worker restores it a second time
onto the device so that falling back to HOST is cheap; on a CPU worker the device copy *is*
the host memory), and every loaded model came from its cached snapshot.

This is the worker's eviction rule (:func:`warmstart.workers.tiers.choose_demotions`), and the
planner (:func:`warmstart.scheduler.planner.plan`) and the simulator's budget cut place models
with the same :class:`Room`: a plan the worker can carry out never makes it demote a model
the plan keeps. Pure: plain values in and out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from warmstart.infra.tiers import Tier

#: The budget levels, warmest first.
LEVELS = (Tier.DEVICE, Tier.HOST, Tier.DISK)
#: The setting that holds each level's budget (``WARMSTART_<NAME>_BUDGET_BYTES``).
BUDGET_NAME = {Tier.DEVICE: "device", Tier.HOST: "host", Tier.DISK: "cache"}


def fills(tier: Tier, level: Tier) -> bool:
    """True when a model at ``tier`` counts against the budget of ``level``: at that tier or
    warmer."""
    return tier >= level


def levels_filled(tier: Tier) -> tuple[Tier, ...]:
    """The budget levels a model at ``tier`` counts against (none for REMOTE)."""
    return _LEVELS_FILLED[tier]


_LEVELS_FILLED = {t: tuple(level for level in LEVELS if fills(t, level)) for t in Tier}


@dataclass(frozen=True)
class Budgets:
    """One worker's budgets in bytes."""

    device_bytes: int
    host_bytes: int
    disk_bytes: int

    def of(self, level: Tier) -> int:
        """The budget of ``level`` (DEVICE, HOST or DISK)."""
        return {Tier.DEVICE: self.device_bytes, Tier.HOST: self.host_bytes,
                Tier.DISK: self.disk_bytes}[level]


def usage(placed: Iterable[tuple[Tier, int]]) -> dict[Tier, int]:
    """Bytes counted against each level by models ``(tier, size_bytes)``."""
    used = {level: 0 for level in LEVELS}
    for tier, size in placed:
        for level in levels_filled(tier):
            used[level] += size
    return used


class Room:
    """What is left of one worker's budgets while models are placed on it, one at a time."""

    def __init__(self, budgets: Budgets, placed: Iterable[tuple[Tier, int]] = ()) -> None:
        self.budgets = budgets
        self.used = usage(placed)
        self._budget = {level: budgets.of(level) for level in LEVELS}

    def free(self, tier: Tier) -> int:
        """The largest model that still fits at ``tier`` (the tightest of its levels)."""
        levels = _LEVELS_FILLED[tier]
        if not levels:
            return 2**63
        budget, used = self._budget, self.used
        return min([budget[level] - used[level] for level in levels])

    def fits(self, size_bytes: int, tier: Tier) -> bool:
        """True when a model of ``size_bytes`` fits at ``tier`` on top of what is placed."""
        return size_bytes <= self.free(tier)

    def place(self, size_bytes: int, tier: Tier) -> None:
        """Count a model of ``size_bytes`` at ``tier`` (whether or not it fits: see :meth:`fits`)."""
        for level in levels_filled(tier):
            self.used[level] += size_bytes

    def over(self) -> list[Tier]:
        """The levels whose budget is exceeded (empty when everything fits)."""
        return [level for level in LEVELS if self.used[level] > self.budgets.of(level)]
