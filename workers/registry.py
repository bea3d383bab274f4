"""The worker registry in Redis: who is alive, what each holds at which tier, and how long
each tier transition took (the scheduler's cost model reads those).

Keys (all under ``ws:``)::

    workers                  SET    every worker name ever registered (pruned when dead)
    worker:<w>               STRING JSON heartbeat: budgets, use, device; expires (TTL)
    worker:<w>:models        HASH   model -> JSON state (tier, health, version, latencies)
    hot:<model>              SET    workers where the model is HOT and consuming its queue
    cost:<model>             HASH   "DISK>HOST" -> seconds, the latest measured transition
    prewarm-claim:<model>    STRING the token of the lazy pre-warm in flight (expires)
    redelivered:<task id>    STRING how many times a request was delivered again (1 day)
    planner                  STRING the beat that plans is alive (expires after a few ticks)
    assignment:<w>           STRING JSON [[model, tier], ...]: what the planner placed on the
                                    worker, in its order (a joining worker warms it first)

Concurrency: every change to more than one key, or that depends on what it reads, is one
atomic step. A write that reads nothing first is a MULTI/EXEC pipeline (redis-py's
``pipeline()`` is transactional by default; ``transaction=True`` is spelt out below); one
whose write depends on a read is one Lua script: the heartbeat (was the worker known?),
forgetting a worker (its models decide which hot sets to clean), and releasing a pre-warm
claim (only the claim's own token may delete it). Nothing here is GET-then-SET.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from warmstart.infra.errors import WorkerError
from warmstart.infra.redis_client import COMPARE_AND_DELETE, key, redis_errors

# KEYS: workers set, heartbeat; ARGV: worker, payload, ttl ms.
# 1 when the registry did not know the worker: not in the set (first start, Redis restarted
# empty, or the beat forgot it as dead) or its heartbeat had expired.
_HEARTBEAT = """
local added = redis.call('SADD', KEYS[1], ARGV[1])
local known = redis.call('EXISTS', KEYS[2])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if added == 1 or known == 0 then return 1 end
return 0
"""

# KEYS: workers set, heartbeat, models hash; ARGV: worker, hot-set key prefix. The hot sets
# are named inside the script from the hash it reads (one Redis, not a cluster, as everywhere
# in warmstart), so a model published meanwhile cannot be missed.
_FORGET = """
for _, model in ipairs(redis.call('HKEYS', KEYS[3])) do
  redis.call('SREM', ARGV[2] .. model, ARGV[1])
end
redis.call('DEL', KEYS[2], KEYS[3])
return redis.call('SREM', KEYS[1], ARGV[1])
"""



class WorkerRegistry:
    """Reads and writes worker and model state; every call is one transaction or script, or
    a few pipelined reads."""

    def __init__(self, client: "redis.Redis[str]") -> None:
        self.client = client
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._forget = client.register_script(_FORGET)
        self._release = client.register_script(COMPARE_AND_DELETE)

    # --- writes (workers) -----------------------------------------------------------------

    def heartbeat(self, worker: str, info: dict[str, Any], ttl_s: float) -> bool:
        """Publish that ``worker`` is alive, with its budgets and use; expires after ttl_s.

        Returns:
            True when the registry did not know the worker before this heartbeat: its first
            one, Redis restarted empty, the beat forgot it as dead, or its heartbeat had
            expired. What it published may be gone: publish every model again
            (``ModelPool.republish``), which also rebuilds the ``hot:<model>`` sets.
        """
        payload = json.dumps({**info, "name": worker, "heartbeat_at": time.time()})
        with redis_errors(self.client, "sending a heartbeat"):
            lost = self._heartbeat(
                keys=[key("workers"), key("worker", worker)],
                args=[worker, payload, max(1, int(ttl_s * 1000))],
            )
        return bool(lost)

    def put_model(self, worker: str, state: dict[str, Any]) -> None:
        """Record one model's state on ``worker``; keeps the ``hot:<model>`` set in step."""
        model = state["model"]
        serving = state.get("tier") == "HOT" and state.get("consuming", False)
        with redis_errors(self.client, f"recording the state of {model!r}"):
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(key("worker", worker, "models"), model, json.dumps(state))
            if serving:
                pipe.sadd(key("hot", model), worker)
            else:
                pipe.srem(key("hot", model), worker)
            pipe.execute()

    def remove_model(self, worker: str, model: str) -> None:
        with redis_errors(self.client, f"removing {model!r}"):
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(key("worker", worker, "models"), model)
            pipe.srem(key("hot", model), worker)
            pipe.execute()

    def forget_worker(self, worker: str) -> None:
        """Drop everything a worker published (clean shutdown, or declared dead)."""
        with redis_errors(self.client, f"forgetting worker {worker!r}"):
            self._forget(
                keys=[key("workers"), key("worker", worker), key("worker", worker, "models")],
                args=[worker, key("hot", "")],
            )

    def record_transition(self, model: str, source: str, target: str, seconds: float) -> None:
        with redis_errors(self.client, "recording a transition time"):
            self.client.hset(key("cost", model), f"{source}>{target}", f"{seconds:.6f}")

    def count_redelivery(self, task_id: str, ttl_s: float = 86400.0) -> int:
        """Count one more delivery of a request that was delivered before; the running total
        of redeliveries (1 on the second delivery)."""
        with redis_errors(self.client, "counting a redelivery"):
            pipe = self.client.pipeline()
            pipe.incr(key("redelivered", task_id))
            pipe.expire(key("redelivered", task_id), int(ttl_s))
            return int(pipe.execute()[0])

    def claim_prewarm(self, model: str, ttl_s: float) -> str | None:
        """Claim the one lazy pre-warm of ``model`` in flight, for ``ttl_s`` at most.

        Returns:
            The claim's token (a non-empty string, so ``if claim_prewarm(...)`` reads as
            before) for the one caller that may send the pre-warm now; None for the others.
            Send the pre-warm task with the token as its task id
            (``send_task(..., task_id=token)``), so that the task releases its own claim.
        """
        token = uuid.uuid4().hex
        with redis_errors(self.client, "claiming a pre-warm"):
            taken = self.client.set(key("prewarm-claim", model), token, nx=True, px=max(1, int(ttl_s * 1000)))
        return token if taken else None

    def release_prewarm(self, model: str, token: str | None = None) -> bool:
        """Release the claim ``token`` holds on ``model``'s pre-warm (compare and delete): a
        pre-warm that outlived its claim leaves a later claim alone.

        Args:
            model: the model.
            token: what :meth:`claim_prewarm` returned (the pre-warm task's id). None
                deletes whatever claim is there: only for callers that do not know the
                token yet; it can free another pre-warm's claim.

        Returns:
            True when a claim was deleted.
        """
        with redis_errors(self.client, "releasing a pre-warm claim"):
            if token is None:
                return bool(self.client.delete(key("prewarm-claim", model)))
            return bool(self._release(keys=[key("prewarm-claim", model)], args=[token]))

    # --- the planner's assignments (beat writes, a joining worker reads) ------------------

    def publish_assignments(self, assignments: dict[str, list[tuple[str, str]]], planner: str, ttl_s: float) -> None:
        """Record each live worker's planned ``(model, tier)`` list, in the planner's order,
        and that ``planner`` is planning; both expire after ``ttl_s`` unless written again."""
        ttl_ms = max(1, int(ttl_s * 1000))
        with redis_errors(self.client, "publishing the planner's assignments"):
            pipe = self.client.pipeline(transaction=True)
            pipe.set(key("planner"), planner, px=ttl_ms)
            for worker, entries in assignments.items():
                pipe.set(key("assignment", worker), json.dumps([list(e) for e in entries]), px=ttl_ms)
            pipe.execute()

    def retire_planner(self, planner: str) -> None:
        """A beat that stops says so at once (only its own mark is deleted), so that nobody
        waits for a planner that is gone."""
        with redis_errors(self.client, "retiring the planner"):
            self._release(keys=[key("planner")], args=[planner])

    def planner_alive(self) -> bool:
        """True while a beat is planning (it wrote assignments within their TTL)."""
        with redis_errors(self.client, "asking whether a planner runs"):
            return bool(self.client.exists(key("planner")))

    def clear_assignment(self, worker: str) -> None:
        """Forget what the planner assigned to an earlier worker of this name (a restart)."""
        with redis_errors(self.client, f"clearing the assignment of {worker!r}"):
            self.client.delete(key("assignment", worker))

    def assignment(self, worker: str) -> list[tuple[str, str]] | None:
        """The planner's latest ``(model, tier)`` list for ``worker``; None when it has none.

        Raises:
            StateUnavailableError: Redis cannot be reached.
            WorkerError: the stored value is not a list of ``[model, tier]`` pairs.
        """
        with redis_errors(self.client, f"reading the assignment of {worker!r}"):
            raw = self.client.get(key("assignment", worker))
        if raw is None:
            return None
        try:
            entries = json.loads(raw)
            if not isinstance(entries, list) or not all(
                isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e) for e in entries
            ):
                raise ValueError("not a list of [model, tier] pairs")
        except ValueError as e:
            raise WorkerError(
                f"the planner's assignment for {worker!r} in Redis is malformed ({e}); "
                "it is rewritten by the next beat tick"
            ) from e
        return [(m, t) for m, t in entries]

    # --- reads (scheduler, status, clients) -----------------------------------------------

    def worker_names(self) -> list[str]:
        with redis_errors(self.client, "listing workers"):
            return sorted(self.client.smembers(key("workers")))

    def workers(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """``(alive workers' heartbeats by name, names whose heartbeat expired)``."""
        names = self.worker_names()
        with redis_errors(self.client, "reading heartbeats"):
            beats = self.client.mget([key("worker", n) for n in names]) if names else []
        alive = {n: json.loads(b) for n, b in zip(names, beats) if b is not None}
        dead = [n for n, b in zip(names, beats) if b is None]
        return alive, dead

    def models_of(self, worker: str) -> dict[str, dict[str, Any]]:
        with redis_errors(self.client, f"reading the models of {worker!r}"):
            raw = self.client.hgetall(key("worker", worker, "models"))
        return {model: json.loads(state) for model, state in raw.items()}

    def hot_workers(self, model: str) -> list[str]:
        """Alive workers where ``model`` is HOT and consuming its queue."""
        with redis_errors(self.client, f"reading where {model!r} is hot"):
            members = sorted(self.client.smembers(key("hot", model)))
            if not members:
                return []
            beats = self.client.mget([key("worker", m) for m in members])
        return [m for m, b in zip(members, beats) if b is not None]

    def queued_requests(self, model: str) -> int:
        """Requests waiting in ``infer.<model>`` (kombu's Redis transport keeps each queue
        as a list named after it; only the default priority is used)."""
        with redis_errors(self.client, f"reading the queue of {model!r}"):
            return int(self.client.llen(f"infer.{model}"))

    def transition_costs(self, model: str) -> dict[str, float]:
        with redis_errors(self.client, f"reading the transition costs of {model!r}"):
            raw = self.client.hgetall(key("cost", model))
        return {k: float(v) for k, v in raw.items()}


class ServedCache:
    """"A live worker serves this model", trusted for ``ttl_s`` once seen, so that a busy
    sender asks Redis at most once a ``ttl_s`` per model. A model that stopped being served
    within that window loses nothing: the worker that leaves with requests waiting asks for a
    pre-warm (``ModelPool.rescue_queue``), and so does the beat for any queue with requests
    and no worker."""

    def __init__(self, registry: WorkerRegistry, ttl_s: float = 1.0) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self._until: dict[str, float] = {}

    def served(self, model: str) -> bool:
        """True when a live worker serves ``model`` (or did within ``ttl_s``).

        Raises:
            StateUnavailableError: Redis cannot be reached.
        """
        now = time.monotonic()
        if self._until.get(model, 0.0) > now:
            return True
        if self.registry.hot_workers(model):
            self._until[model] = now + self.ttl_s
            return True
        return False
