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

import time
from collections.abc import Iterable

import redis

from infra.redis_client import key, redis_errors
from snapshot.names import validate_name

IDLE_BINS = 240

# KEYS: hour hash, idle hash, profile hash, last; ARGV: minute, minute-of-hour, minute-of-day,
# count, ttl seconds, idle bins. An idle time is the distance in minutes between two minutes
# that had arrivals (1 when they are adjacent), the convention of scheduler.policies.base.
_RECORD = """
local minute = tonumber(ARGV[1])
redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('HINCRBY', KEYS[3], ARGV[3], ARGV[4])
local prev = tonumber(redis.call('GET', KEYS[4]) or '-1')
if minute > prev then
  redis.call('SET', KEYS[4], minute)
  if prev >= 0 then
    local idle = minute - prev
    if idle >= tonumber(ARGV[6]) then idle = tonumber(ARGV[6]) end
    redis.call('HINCRBY', KEYS[2], idle, 1)
  end
end
return prev
"""


def _tkey(model: str, *parts: str) -> str:
    return key("traffic", model, *parts)


class TrafficRecorder:
    """Records arrivals and reads them back for the scheduler."""

    def __init__(self, client: "redis.Redis[str]", retention_min: int = 7 * 24 * 60, minute_s: float = 60.0) -> None:
        self.client = client
        self.retention_min = retention_min
        self.minute_s = minute_s
        self._script = client.register_script(_RECORD)

    def record(self, model: str, count: int = 1, now_s: float | None = None) -> None:
        """Record ``count`` arrivals of ``model`` at ``now_s`` (default: now)."""
        self.record_many([(model, count, time.time() if now_s is None else now_s)])

    def record_many(self, arrivals: Iterable[tuple[str, int, float]]) -> None:
        """Record ``(model, count, time_s)`` arrivals: one script call each, one round trip."""
        with redis_errors(self.client, "recording arrivals"):
            pipe = self.client.pipeline(transaction=False)
            for model, count, t_s in arrivals:
                validate_name(model)
                minute = self.minute_of(t_s)
                hour, minute_of_hour = divmod(minute, 60)
                self._script(
                    keys=[_tkey(model, "m", str(hour)), _tkey(model, "idle"), _tkey(model, "profile"), _tkey(model, "last")],
                    args=[minute, minute_of_hour, minute % 1440, count, self.retention_min * 60 + 3600, IDLE_BINS],
                    client=pipe,
                )
            pipe.execute()

    def minute_of(self, t_s: float) -> int:
        """The traffic minute (minutes of ``minute_s`` seconds since the epoch) of a time."""
        return int(t_s // self.minute_s)

    def minute_counts(self, model: str, start_minute: int, end_minute: int) -> dict[int, int]:
        """Arrivals per minute in ``[start_minute, end_minute)`` (minutes since the epoch)."""
        hours = range(start_minute // 60, (end_minute - 1) // 60 + 1)
        with redis_errors(self.client, f"reading the traffic of {model!r}"):
            pipe = self.client.pipeline()
            for hour in hours:
                pipe.hgetall(_tkey(model, "m", str(hour)))
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
            raw = self.client.hgetall(_tkey(model, "idle"))
        bins = [0] * (IDLE_BINS + 1)
        for b, c in raw.items():
            bins[int(b)] = int(c)
        return bins

    def daily_profile(self, model: str) -> list[int]:
        """Arrivals per minute of the day (UTC), 1440 entries."""
        with redis_errors(self.client, f"reading the daily profile of {model!r}"):
            raw = self.client.hgetall(_tkey(model, "profile"))
        profile = [0] * 1440
        for m, c in raw.items():
            profile[int(m)] = int(c)
        return profile

    def last_arrival_minute(self, model: str) -> int | None:
        with redis_errors(self.client, f"reading the last arrival of {model!r}"):
            value = self.client.get(_tkey(model, "last"))
        return int(value) if value is not None else None

    def models(self) -> list[str]:
        """Models with any recorded traffic."""
        with redis_errors(self.client, "listing models with traffic"):
            names = {k.split(":")[2] for k in self.client.scan_iter(match=key("traffic", "*", "last"), count=500)}
        return sorted(names)
