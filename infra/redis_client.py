"""The one wrapper around redis-py: connections, key names, and error conversion.

Every Redis call in warmstart goes through a client from :func:`connect` inside
:func:`redis_errors`, so that a Redis failure surfaces as :class:`StateUnavailableError`
naming the URL, never as a bare redis-py exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from warmstart.infra.errors import StateUnavailableError

#: Every key warmstart writes starts with this, so a shared Redis stays tidy.
KEY_PREFIX = "ws:"


#: Delete KEYS[1] only if it holds ARGV[1] (a lease's holder, a claim's token): one atomic step,
#: so nobody deletes what another took meanwhile.
COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def key(*parts: str) -> str:
    """A namespaced key: ``key("worker", "w1") == "ws:worker:w1"``."""
    return KEY_PREFIX + ":".join(parts)


def connect(url: str, *, timeout_s: float = 5.0) -> "redis.Redis[str]":
    """A client that decodes responses to str and fails fast when Redis is down."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=30,
    )


@contextmanager
def redis_errors(client: "redis.Redis[str]", doing: str) -> Iterator[None]:
    """Convert redis-py errors raised inside the block into StateUnavailableError."""
    try:
        yield
    except redis.RedisError as e:
        kwargs = client.connection_pool.connection_kwargs
        url = f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"
        raise StateUnavailableError(
            f"Redis at {url} failed while {doing}: {e}. Check WARMSTART_REDIS_URL and that "
            "redis-server is running"
        ) from e
