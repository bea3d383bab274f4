"""Where a sent request is, so that a client can re-send one the broker lost.

Inference is at-least-once from the worker's side (late acks: a request whose worker dies is
handed to another after the visibility timeout), but kombu's Redis transport has a window in
which a request is in neither place that protects it: it pops the message from the queue
(BRPOP) and only then records it as unacknowledged. A worker killed in that window, or a
Redis restarted without persistence, loses the message. The client closes the gap: a request
that has waited ``WARMSTART_REQUEST_CHECK_S`` without an answer is looked for, and one that is
nowhere (not answered, not running, not queued) twice in a row, a second apart, is sent again
with the same id (at most ``WARMSTART_MAX_DELIVERIES`` times). The worst case is a duplicate
execution, which at-least-once allows; the client reads one answer.
"""

from __future__ import annotations

import redis

from warmstart.infra.redis_client import redis_errors

#: Celery's result key for a task id (the Redis result backend's default prefix).
RESULT_KEY_PREFIX = "celery-task-meta-"
#: kombu's Redis transport keeps delivered, unacknowledged messages in this hash.
UNACKED_KEY = "unacked"

# KEYS: result key, unacked hash, queue list; ARGV: task id, chunk size. The id appears in
# clear in each message's headers. The queue is read in chunks so that a long queue never
# becomes one large table inside Redis.
_LOCATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'answered' end
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do
  if string.find(v, ARGV[1], 1, true) then return 'running' end
end
local chunk = tonumber(ARGV[2])
local n = redis.call('LLEN', KEYS[3])
local i = 0
while i < n do
  for _, v in ipairs(redis.call('LRANGE', KEYS[3], i, i + chunk - 1)) do
    if string.find(v, ARGV[1], 1, true) then return 'queued' end
  end
  i = i + chunk
end
return 'missing'
"""


class RequestTracker:
    """Finds a request by its id: ``answered``, ``running``, ``queued`` or ``missing``."""

    def __init__(self, client: "redis.Redis[str]") -> None:
        self.client = client
        self._locate = client.register_script(_LOCATE)

    def locate(self, task_id: str, queue: str) -> str:
        """Where request ``task_id`` sent to ``queue`` is now (one atomic script call).

        Raises:
            StateUnavailableError: Redis cannot be reached.
        """
        with redis_errors(self.client, f"looking for request {task_id}"):
            return str(self._locate(keys=[RESULT_KEY_PREFIX + task_id, UNACKED_KEY, queue], args=[task_id, 200]))
