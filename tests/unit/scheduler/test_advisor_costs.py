"""Advisor and cost model with plain numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from warmstart.infra.errors import SchedulerError
from warmstart.scheduler.advisor import advise
from warmstart.scheduler.costs import GiB, ModelCosts, Prices, default_to_hot_s, host_threshold
from warmstart.scheduler.policies.base import Tier
from warmstart.scheduler.traces import Trace


def test_default_load_times_grow_with_coldness_and_size() -> None:
    small, big = default_to_hot_s(GiB // 10), default_to_hot_s(10 * GiB)
    for d in (small, big):
        assert d["HOT"] == 0 < d["HOST"] < d["DISK"] < d["REMOTE"]
    assert big["REMOTE"] > small["REMOTE"]
    c = ModelCosts("m", GiB)
    assert c.value_per_byte(Tier.HOT, 0.5) == pytest.approx(0.5 * c.seconds_to_hot("DISK") / GiB)
    assert c.memory_cost_usd(Tier.HOT, 60, Prices(gpu_gb_hour=2.0)) == pytest.approx(2.0)
    assert 0 < host_threshold(c, 0.1) < 0.1
    with pytest.raises(SchedulerError, match="size"):
        ModelCosts("m", 0)


def test_advise_busy_model_eager_and_rare_model_lazy() -> None:
    counts = np.zeros((2, 1440), dtype=np.int64)
    counts[0] = 3 * (np.random.default_rng(0).random(1440) < 0.5)  # random, 1 minute in 2
    counts[1, [10, 700]] = 1  # twice a day
    trace = Trace(np.arange(1, 1441), ["busy", "rare"], counts, np.array([100.0, 100.0]),
                  np.array([1.0, 1.0]))
    rows = advise(trace, ["fixed-10"])
    json.dumps(rows)
    busy, rare = rows
    assert busy["arrivals_per_day"] == pytest.approx(counts[0].sum())
    assert busy["recommendation"]["mode"] == "eager"
    assert rare["recommendation"]["mode"] == "lazy"
    # fixed-10: both of rare's minutes are cold (first ever, then a 690-minute gap).
    assert rare["policies"]["fixed-10"]["cold_starts_per_day"] == pytest.approx(2)
    hot_h = rare["policies"]["fixed-10"]["hot_hours_per_day"]
    assert hot_h == pytest.approx((2 + 10 + 10) / 60)
    usd = rare["policies"]["fixed-10"]["memory_usd_per_day"]
    assert usd == pytest.approx(hot_h * 100 / 1024 * Prices().gpu_gb_hour)
