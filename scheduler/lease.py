"""The beat's leader lease in Redis: only the beat that holds it acts.

Concurrency: the lease is one key whose value is the holder's id, with an expiry. Taking it
is one ``SET NX PX``; renewing it (compare and extend) and releasing it (compare and delete)
are each one Lua script, so a beat can never extend or delete a lease that expired and was
taken by another beat between a read and a write.
"""

from __future__ import annotations

import redis

from warmstart.infra.redis_client import COMPARE_AND_DELETE, redis_errors

# KEYS: the lease; ARGV: holder id, ttl ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""



class Lease:
    """A lease named ``name`` that ``holder`` takes, renews and releases."""

    def __init__(self, client: "redis.Redis[str]", name: str, holder: str) -> None:
        self.client = client
        self.name = name
        self.holder = holder
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(COMPARE_AND_DELETE)

    def acquire(self, ttl_ms: int) -> bool:
        """Take the lease, or renew it when this holder has it; True while it is held.

        Raises:
            StateUnavailableError: Redis failed.
        """
        with redis_errors(self.client, "taking the beat lease"):
            if self.client.set(self.name, self.holder, nx=True, px=ttl_ms):
                return True
            return bool(self._renew(keys=[self.name], args=[self.holder, ttl_ms]))

    def release(self) -> bool:
        """Give the lease up if this holder still has it; True when it was released.

        Raises:
            StateUnavailableError: Redis failed.
        """
        with redis_errors(self.client, "releasing the beat lease"):
            return bool(self._release(keys=[self.name], args=[self.holder]))

    def holder_now(self) -> str | None:
        """Who holds the lease now (None: nobody)."""
        with redis_errors(self.client, "reading the beat lease"):
            return self.client.get(self.name)
