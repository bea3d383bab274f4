"""Traffic recording in Redis: what the scheduler learns demand from.

Every enqueue records one arrival with one atomic script call (a constant number of Redis
operations, one round trip). Per model, under ``ws:traffic:<model>:``::

    m:<hour>   HASH  minute-of-hour -> arrivals   (one key per hour, expires after retention)
    idle       HASH  idle minutes (1..239; 240 = 240 or more, out of range) -> count
    profile    HASH  minute-of-day (0..1439) -> arrivals                  (the daily profile)
    last       STRING the minute of the last arrival (minutes since the epoch)

Memory per model is bounded: at most ``retention/60`` hour hashes of at most 60 fields, 241
idle bins and 1440 profile fields, about 1440 + 241 + retention fields in all (≈ 250 KB for
a week of retention with traffic every minute, far less for sparse traffic).
"""

from __future__ import annotations

from warmstart.infra.redis_client import key, redis_errors
from warmstart.workers.arrivals import IDLE_BINS, ArrivalRecorder, traffic_key

__all__ = ["IDLE_BINS", "TrafficRecorder"]


class TrafficRecorder(ArrivalRecorder):
    """Records arrivals and reads them back for the scheduler."""

    def minute_counts(self, model: str, start_minute: int, end_minute: int) -> dict[int, int]:
        """Arrivals per minute in ``[start_minute, end_minute)`` (minutes since the epoch)."""
        hours = range(start_minute // 60, (end_minute - 1) // 60 + 1)
        with redis_errors(self.client, f"reading the traffic of {model!r}"):
            pipe = self.client.pipeline()
            for hour in hours:
                pipe.hgetall(traffic_key(model, "m", str(hour)))
            rows = pipe.execute()
        counts: dict[int, int] = {}
        for hour, row in zip(hours, rows):
            for minute_of_hour, value in row.items():
                minute = hour * 60 + int(minute_of_hour)
                if start_minute <= minute < end_minute:
                    counts[minute] = int(value)
        return counts

    def idle_histogram(self, model: str) -> list[int]:
        """Counts of idle times in minutes: bin k for k minutes (1..239), bin 240 for 240 or more."""
        with redis_errors(self.client, f"reading the idle times of {model!r}"):
            raw = self.client.hgetall(traffic_key(model, "idle"))
        bins = [0] * (IDLE_BINS + 1)
        for b, c in raw.items():
            bins[int(b)] = int(c)
        return bins

    def daily_profile(self, model: str) -> list[int]:
        """Arrivals per minute of the day (UTC), 1440 entries."""
        with redis_errors(self.client, f"reading the daily profile of {model!r}"):
            raw = self.client.hgetall(traffic_key(model, "profile"))
        profile = [0] * 1440
        for m, c in raw.items():
            profile[int(m)] = int(c)
        return profile

    def last_arrival_minute(self, model: str) -> int | None:
        with redis_errors(self.client, f"reading the last arrival of {model!r}"):
            value = self.client.get(traffic_key(model, "last"))
        return int(value) if value is not None else None

    def models(self) -> list[str]:
        """Models with any recorded traffic."""
        with redis_errors(self.client, "listing models with traffic"):
            names = {k.split(":")[2] for k in self.client.scan_iter(match=key("traffic", "*", "last"), count=500)}
        return sorted(names)
