"""The warmth tiers: the one vocabulary of policies, planner, simulator and workers.

``REMOTE < DISK < HOST < DEVICE < HOT``: a model only in the store, in a worker's local cache,
restored in host memory, on the execution device, and warmed up, health-checked and consuming
its inference queue. Policies decide among ``HOT``, ``HOST``, ``DISK`` and ``REMOTE``
(:data:`POLICY_TIERS`); ``DEVICE`` is a worker's step between HOST and HOT. Tiers travel as
their names (``"HOT"``) in JSON and Redis.
"""

from __future__ import annotations

from enum import IntEnum


class Tier(IntEnum):
    """A warmth tier; larger is warmer."""

    REMOTE = 0
    DISK = 1
    HOST = 2
    DEVICE = 3
    HOT = 4

    @classmethod
    def parse(cls, value: "str | int | Tier") -> "Tier":
        """A tier from its name (any case) or number.

        Raises:
            ValueError: not a tier; the message lists the tiers.
        """
        if isinstance(value, Tier):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 4:
            return cls(value)
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        raise ValueError(f"unknown tier {value!r}; tiers are {[t.name for t in cls]}")

    def __str__(self) -> str:
        return self.name


def policy_tier(value: "str | int | Tier") -> Tier:
    """The policy tier that stands for a worker's tier: DEVICE (on its way to HOT, or gated off
    after a failed check) counts as HOST, what it holds without serving; the others are themselves.

    Raises:
        ValueError: not a tier.
    """
    tier = Tier.parse(value)
    return Tier.HOST if tier == Tier.DEVICE else tier


#: The tiers a policy chooses among, warmest first (a worker passes through DEVICE on its way
#: to HOT; where the memory goes is the planner's business, see the capacity model).
POLICY_TIERS = (Tier.HOT, Tier.HOST, Tier.DISK, Tier.REMOTE)
