"""Warm-up policies: ``fixed-N`` keep-alive, the ``hybrid`` histogram policy, ``warmstart``.

All share the interface of :mod:`warmstart.scheduler.policies.base`; build one by name with
:func:`make_policy`.
"""

from __future__ import annotations

import re

from warmstart.infra.errors import SchedulerError
from warmstart.scheduler.policies.base import (
    Decision,
    ModelContext,
    Policy,
    Tier,
    TrafficState,
    observe,
)

KNOWN_POLICIES = ("fixed-10", "fixed-N (N whole minutes)", "hybrid", "warmstart",
                  "warmstart-B (B break-even minutes)", "<any of these>+host (unloaded models parked at HOST)")


def make_policy(name: str) -> Policy:
    """Build a policy by name.

    Args:
        name: ``fixed-N`` (keep-alive N minutes, e.g. ``fixed-10``), ``hybrid``,
            ``warmstart`` (a cold start worth 240 minutes of the fleet's mean model's GPU
            memory, ``DEFAULT_BREAKEVEN_MIN``) or ``warmstart-B`` (worth B minutes); any of
            them with ``+host`` (e.g. ``hybrid+host``) parks the models it unloads at HOST
            (:mod:`warmstart.scheduler.policies.park`).

    Returns:
        A fresh :class:`Policy`.

    Raises:
        SchedulerError: the name is unknown; the message lists the known ones.
    """
    # Imported here: the cost model imports the base module, and warmstart imports costs.
    from warmstart.scheduler.policies.fixed import FixedKeepAlive
    from warmstart.scheduler.policies.hybrid import HybridHistogram
    from warmstart.scheduler.policies.warmstart import WarmstartPolicy

    key = name.strip().lower()
    if key.endswith("+host") and not key[: -len("+host")].endswith("+host"):
        from warmstart.scheduler.policies.park import ParkAtHost

        return ParkAtHost(make_policy(key[: -len("+host")]))
    if key == "hybrid":
        return HybridHistogram()
    if key == "warmstart":
        return WarmstartPolicy()
    m = re.fullmatch(r"fixed-(\d+)", key)
    if m:
        return FixedKeepAlive(int(m.group(1)))
    m = re.fullmatch(r"warmstart-(\d+(?:\.\d+)?)", key)
    if m and float(m.group(1)) > 0:
        return WarmstartPolicy(float(m.group(1)))
    raise SchedulerError(
        f"unknown policy {name!r}; known policies: {', '.join(KNOWN_POLICIES)}"
    )


__all__ = ["Decision", "ModelContext", "Policy", "Tier", "TrafficState", "make_policy",
           "observe", "KNOWN_POLICIES"]
