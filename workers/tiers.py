"""Warmth tiers and the pure rules for moving between them within budgets.

``REMOTE < DISK < HOST < DEVICE < HOT``. A model's bytes count against the budget of every
tier it occupies at or below its own (a DEVICE model is also on disk and keeps its host
copy); the rule is written once, in :mod:`warmstart.workers.capacity`, which the planner and
the simulator use too:

- DISK: the snapshot is in the local cache (cache budget).
- HOST: the module is restored on the CPU, its weights mapped and resident (host budget).
- DEVICE: the module is on the execution device (device budget; on a CPU-only worker this is
  the same memory as HOST, which still counts against the device budget: it says how many
  models may be ready at once).
- HOT: DEVICE plus warmed up, health-checked and consuming its inference queue.

Eviction demotes before it drops: making room on the device moves the least recently used
model DEVICE → HOST (cheap to undo), making room in host memory moves it HOST → DISK.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from warmstart.infra.errors import BudgetError
from warmstart.infra.tiers import Tier
from warmstart.workers.capacity import BUDGET_NAME, fills

#: Which budget a level is (``WARMSTART_<NAME>_BUDGET_BYTES``).
BUDGET_OF_TIER = BUDGET_NAME


@dataclass(frozen=True)
class Resident:
    """What the eviction rule needs to know about one model held by a worker."""

    model: str
    tier: Tier
    size_bytes: int
    last_used_s: float  # monotonic seconds of the last request or warm-up
    pinned: bool = False  # in the middle of a transition, or the model being made room for
    keep_last: bool = False  # an eager model: demoted only when no other model can make room
    #: Pinned only while it is used (a request's lease, a promotion or an eviction in
    #: progress): its room may free up soon. False for a staged version or a drain.
    busy: bool = False


def steps_between(current: Tier, target: Tier) -> list[Tier]:
    """The tiers passed through, one step at a time, from ``current`` to ``target``."""
    if target > current:
        return [Tier(t) for t in range(current + 1, target + 1)]
    return [Tier(t) for t in range(current - 1, target - 1, -1)]


def used_bytes(residents: Iterable[Resident], level: Tier) -> int:
    """Bytes counted against the budget of ``level`` (DEVICE, HOST or DISK): the models at
    that tier or warmer (:func:`warmstart.workers.capacity.fills`)."""
    return sum(r.size_bytes for r in residents if fills(r.tier, level))


def choose_demotions(
    residents: Iterable[Resident], level: Tier, needed_bytes: int, budget_bytes: int
) -> list[Resident]:
    """Pick the models to demote below ``level`` so that ``needed_bytes`` more fit.

    Least recently used first, eager (``keep_last``) models after all others; pinned models
    are never picked.

    Returns:
        The models to demote to ``level - 1``, in order (empty when it already fits).

    Raises:
        BudgetError: the model cannot fit even with every unpinned model demoted.
    """
    holders = [r for r in residents if fills(r.tier, level)]
    free = budget_bytes - used_bytes(holders, level)
    if needed_bytes > budget_bytes:
        raise BudgetError(
            f"a model of {needed_bytes} bytes is larger than the whole {level.name} budget of "
            f"{budget_bytes} bytes; raise WARMSTART_{BUDGET_OF_TIER.get(level, 'cache').upper()}"
            "_BUDGET_BYTES or keep the model at a lower tier"
        )
    victims: list[Resident] = []
    for candidate in sorted((r for r in holders if not r.pinned), key=lambda r: (r.keep_last, r.last_used_s)):
        if free >= needed_bytes:
            break
        victims.append(candidate)
        free += candidate.size_bytes
    if free < needed_bytes:
        # Waiting can help only if the models in use would leave enough room once idle.
        in_use = sum(r.size_bytes for r in holders if r.pinned and r.busy)
        raise BudgetError(
            f"{needed_bytes} bytes do not fit the {level.name} budget ({budget_bytes} bytes): "
            f"the models holding it are in use or pinned (staged versions, a drain); retry "
            f"later or raise the budget",
            busy=free + in_use >= needed_bytes,
        )
    return victims
