"""Recording arrivals in Redis: the write side of the traffic the scheduler learns demand from.

Every arrival is recorded with one atomic script call (a constant number of Redis operations,
one round trip; batches are pipelined). The keys, per model under ``ws:traffic:<model>:``, and
the reading side are described in :mod:`warmstart.scheduler.traffic`. This module sits in the
workers layer so that whoever sees requests (the client, a worker) can record them without
importing the scheduler.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis

from warmstart.infra.redis_client import key, redis_errors
from warmstart.snapshot.names import validate_name

IDLE_BINS = 240

# KEYS: hour hash, idle hash, profile hash, last; ARGV: minute, minute-of-hour, minute-of-day,
# count, ttl seconds, idle bins. An idle time is the distance in minutes between two minutes
# that had arrivals (1 when they are adjacent), the convention of warmstart.scheduler.policies.base.
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


def traffic_key(model: str, *parts: str) -> str:
    return key("traffic", model, *parts)


class ArrivalRecorder:
    """Records arrivals (the scheduler's :class:`~warmstart.scheduler.traffic.TrafficRecorder` reads them)."""

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
                    keys=[traffic_key(model, "m", str(hour)), traffic_key(model, "idle"), traffic_key(model, "profile"), traffic_key(model, "last")],
                    args=[minute, minute_of_hour, minute % 1440, count, self.retention_min * 60 + 3600, IDLE_BINS],
                    client=pipe,
                )
            pipe.execute()

    def minute_of(self, t_s: float) -> int:
        """The traffic minute (minutes of ``minute_s`` seconds since the epoch) of a time."""
        return int(t_s // self.minute_s)
