"""Traffic recording against a real redis-server."""

from __future__ import annotations

import pytest

from warmstart.infra.errors import InvalidNameError
from warmstart.infra.redis_client import connect
from warmstart.scheduler.traffic import IDLE_BINS, TrafficRecorder

pytestmark = pytest.mark.integration


def test_arrivals_per_minute_idle_times_profile_and_last(redis_url: str) -> None:
    recorder = TrafficRecorder(connect(redis_url), retention_min=600)
    base = 1_000_000 * 60  # minute 1_000_000
    for minute, count in [(0, 2), (1, 1), (5, 3), (5 + 300, 1)]:
        for _ in range(count):
            recorder.record("m", now_s=base + minute * 60 + 7)
    counts = recorder.minute_counts("m", 1_000_000, 1_000_000 + 400)
    assert counts == {1_000_000: 2, 1_000_001: 1, 1_000_005: 3, 1_000_305: 1}
    hist = recorder.idle_histogram("m")
    assert len(hist) == IDLE_BINS + 1
    # Idle times between minutes with arrivals: 1 (adjacent), 4, and 300 (out of range).
    assert hist[1] == 1 and hist[4] == 1 and hist[IDLE_BINS] == 1 and sum(hist) == 3
    profile = recorder.daily_profile("m")
    assert profile[1_000_000 % 1440] == 2 and profile[1_000_005 % 1440] == 3 and sum(profile) == 7
    assert recorder.last_arrival_minute("m") == 1_000_305
    assert recorder.models() == ["m"]


def test_minutes_outside_the_window_are_not_returned(redis_url: str) -> None:
    recorder = TrafficRecorder(connect(redis_url))
    for minute in (59, 60, 61, 125):
        recorder.record("w", now_s=minute * 60.0)
    assert recorder.minute_counts("w", 60, 125) == {60: 1, 61: 1}


def test_retention_bounds_memory(redis_url: str) -> None:
    client = connect(redis_url)
    recorder = TrafficRecorder(client, retention_min=60)
    recorder.record("r", now_s=0)
    ttls = [client.ttl(k) for k in client.scan_iter(match="ws:traffic:r:m:*")]
    assert ttls and all(0 < t <= 60 * 60 + 3600 for t in ttls)


def test_compressed_minutes_for_the_demo(redis_url: str) -> None:
    recorder = TrafficRecorder(connect(redis_url), minute_s=2.0)
    recorder.record("fast", now_s=10.0)
    recorder.record("fast", now_s=11.9)
    assert recorder.minute_counts("fast", 0, 10) == {5: 2}


def test_bad_model_names_are_refused(redis_url: str) -> None:
    with pytest.raises(InvalidNameError):
        TrafficRecorder(connect(redis_url)).record("../x")
