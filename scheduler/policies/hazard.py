"""warmstart's arrival probability: the hazard of a model's next idle time, learned online.

After an arrival, ``h(d)`` is the probability of an arrival in the ``d``-th idle minute given
none came before. Three sources are pooled, each one a number of pseudo idle times:

1. **The data**: ``n(d)`` idle times of exactly ``d`` minutes out of ``R(d)`` of at least ``d``
   (the empirical hazard ``n/R``).
2. **The coarse rate** ``h̄(d)``: events over at-risk minutes in the log-scale window
   ``[d/2, 2d]`` of the same data, weighted as ``PRIOR_WEIGHT`` idle time. It fills the holes
   between observed idle times (a timer seen at 29, 30 and 31 minutes is likely at 32) and
   carries the minute-binning tolerance: two arrivals a true ``x`` minutes apart are counted
   ``⌊x⌋`` or ``⌈x⌉`` apart, and the window of every ``d ≥ 2`` holds ``d ± 1``. It has weight
   only where some idle time is still at risk (``R(d) > 0``): past the longest idle time
   seen, the rate of shorter ones says nothing about how long this one will last.
3. **The first-gap prior**: Laplace's rule of succession, the belief before any idle time
   is known (``h₀(d) = 1/(d + 1)``, a scale-free idle time with survival ``1/d``), kept as
   ``FIRST_GAP_WEIGHT`` pseudo idle time: ``n₀(d) = 1/(d(d + 1))`` of it ends at ``d``,
   ``R₀(d) = 1/d`` of it is still at risk.

``h(d) = (n(d) + k·h̄(d) + n₀(d)) / (R(d) + k + R₀(d))``. With many idle times the data win
(a timer is HOT only in its minute). With few, the prior still counts: a model seen to idle
twice for 30 minutes is not trusted to stay away for exactly 29 minutes (the small-count
regime that made the published hybrid policy fall back to a plain keep-alive). Past the
longest idle time seen (``R(d) = 0``), ``h(d) = n₀/R₀ = 1/(d + 1)`` exactly: the model is back
in the first gap, and the same ski-rental hold applies.
"""

from __future__ import annotations

import numpy as np

from warmstart.scheduler.policies.base import IDLE_BINS

#: Weight of the coarse-scale rate, in idle times: one pseudo-observation.
PRIOR_WEIGHT = 1.0
#: Weight of the first-gap (Laplace) prior, in idle times: one pseudo-observation, as in the
#: rule of succession itself.
FIRST_GAP_WEIGHT = 1.0

_D = np.arange(IDLE_BINS)
#: The log-scale window [d/2, 2d] of each idle length d (``_HI1`` is its end + 1).
_LO = np.maximum(1, _D // 2)
_HI1 = np.minimum(IDLE_BINS - 1, 2 * _D) + 1
_DF = np.maximum(_D, 1).astype(np.float64)
#: The first-gap prior as pseudo idle times: ending at d, and at risk at d (d = 0 unused).
_N0 = FIRST_GAP_WEIGHT / (_DF * (_DF + 1.0))
_R0 = FIRST_GAP_WEIGHT / _DF


def first_gap_prob(idle_min: int) -> float:
    """Arrival probability in the ``idle_min``-th idle minute when no idle time is known.

    The ``idle_min - 1`` minutes since the arrival passed without one; Laplace's rule of
    succession over them gives ``1 / (idle_min + 1)``. Thresholding it at ``θ = 1/(1 + B)``
    keeps the model HOT for exactly ``B`` minutes, the ski-rental hold.
    """
    return 1.0 / (max(idle_min, 0) + 1.0)


def _parts(idle_hist: list[int], idle_oob: int) -> tuple[np.ndarray, ...]:
    """``n(d)``, ``R(d)``, the coarse rate and its weight (0 where nothing is at risk)."""
    n = np.asarray(idle_hist, dtype=np.float64)
    at_risk = np.cumsum(n[::-1])[::-1] + idle_oob
    cum_events = np.concatenate(([0.0], np.cumsum(n)))
    cum_exposure = np.concatenate(([0.0], np.cumsum(at_risk)))
    events = cum_events[_HI1] - cum_events[_LO]
    exposure = cum_exposure[_HI1] - cum_exposure[_LO]
    with np.errstate(divide="ignore", invalid="ignore"):
        coarse = np.where(exposure > 0, events / exposure, 0.0)
    weight = np.where((exposure > 0) & (at_risk > 0), PRIOR_WEIGHT, 0.0)
    return n, at_risk, coarse, weight


def idle_hazard(idle_hist: list[int], idle_oob: int) -> np.ndarray:
    """Hazard of the next idle time for each idle length 0..IDLE_BINS-1 (see module doc).

    Args:
        idle_hist: the idle-time histogram (``IDLE_BINS`` one-minute bins).
        idle_oob: idle times out of the histogram's range.

    Returns:
        ``(IDLE_BINS,)`` float array in (0, 1] (index 0 is 0); with no idle time at all, the
        first-gap prior ``1/(d + 1)``.
    """
    n, at_risk, coarse, weight = _parts(idle_hist, idle_oob)
    hazard = (n + weight * coarse + _N0) / (at_risk + weight + _R0)
    hazard[0] = 0.0
    return hazard


def data_support(idle_hist: list[int], idle_oob: int) -> int:
    """The longest idle length still at risk in the data (``IDLE_BINS - 1`` when some idle
    time was out of range; 0 with no data): past it :func:`idle_hazard` is exactly the
    first-gap rule ``1/(d + 1)``."""
    if idle_oob > 0:
        return IDLE_BINS - 1
    seen = [d for d, count in enumerate(idle_hist) if count]
    return seen[-1] if seen else 0


def hazard_at_1(idle_hist: list[int], idle_oob: int) -> float:
    """``idle_hazard(idle_hist, idle_oob)[1]``, computed alone (same operations, same bits)."""
    at_risk_1 = float(sum(idle_hist[1:]) + idle_oob)
    n1 = float(idle_hist[1])
    at_risk_2 = at_risk_1 - n1
    events = n1 + float(idle_hist[2])
    exposure = at_risk_1 + at_risk_2
    coarse = events / exposure if exposure > 0 else 0.0
    weight = PRIOR_WEIGHT if exposure > 0 and at_risk_1 > 0 else 0.0
    return (n1 + weight * coarse + float(_N0[1])) / (at_risk_1 + weight + float(_R0[1]))
