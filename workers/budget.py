"""Reservations: bytes that promotions in progress count against a worker's budgets.

A promotion counts against the budget of the tier it moves to from the moment it is decided,
not when its load finishes (as Ray Serve's replicas count against a node while they start):
otherwise two concurrent promotions each see the room free and together exceed the budget.
:meth:`Reservations.reserve` decides under one lock: it refuses, or it picks the victims to
demote (marked so that no other promotion picks them too) and records the reservation. That
lock is the pool's ``_budget_lock`` of rule 3 in :mod:`warmstart.workers.pool`: it guards
arithmetic only and is never held while waiting for a model's lock, loading, or calling out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from warmstart.infra.errors import BudgetError
from warmstart.infra.tiers import Tier
from warmstart.workers.tiers import Resident, choose_demotions

T = TypeVar("T")


class Reservations:
    """``(model, tier) -> bytes`` reserved for promotions in progress, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, Tier], int] = {}

    def moving(self) -> set[str]:
        """Models with a promotion in progress (never picked as victims)."""
        return {model for model, _ in list(self._held)}  # list(): one atomic copy

    def total(self, level: Tier) -> int:
        """Bytes reserved against ``level``'s budget."""
        with self._lock:
            return sum(b for (_, t), b in self._held.items() if t == level)

    def reserve(
        self,
        model: str,
        level: Tier,
        size_bytes: int,
        budget_bytes: int,
        residents: Callable[[], list[Resident]],
        mark: Callable[[list[str]], list[T]],
    ) -> list[T]:
        """Reserve ``size_bytes`` of ``model`` against ``level``, choosing what must make room.

        Args:
            residents: the models held now (read under the lock; ``model`` itself is ignored).
            mark: marks the chosen victims as being evicted (under the lock) and returns them.

        Returns:
            The marked victims, to demote below ``level`` before loading (empty: it fits).

        Raises:
            BudgetError: it cannot fit, even with every idle model demoted (nothing reserved).
        """
        with self._lock:
            others = sum(b for (m, t), b in self._held.items() if t == level and m != model)
            if size_bytes <= budget_bytes < size_bytes + others:
                raise BudgetError(
                    f"{size_bytes} bytes for {model!r} do not fit the {level.name} budget "
                    f"({budget_bytes} bytes) while other promotions hold {others} bytes of it; retry later",
                    busy=True,
                )
            candidates = [r for r in residents() if r.model != model]
            victims = choose_demotions(candidates, level, size_bytes, budget_bytes - others)
            marked = mark([v.model for v in victims])
            self._held[(model, level)] = size_bytes
            return marked

    def release(self, model: str, level: Tier) -> None:
        """The promotion finished (the model's tier now counts) or failed."""
        with self._lock:
            self._held.pop((model, level), None)
