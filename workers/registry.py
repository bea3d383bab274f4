"""The worker registry in Redis: who is alive, what each holds at which tier, and how long
each tier transition took (the scheduler's cost model reads those).

Keys (all under ``ws:``)::

    workers                  SET    every worker name ever registered (pruned when dead)
    worker:<w>               STRING JSON heartbeat: budgets, use, device; expires (TTL)
    worker:<w>:models        HASH   model -> JSON state (tier, health, version, latencies)
    hot:<model>              SET    workers where the model is HOT and consuming its queue
    cost:<model>             HASH   "DISK>HOST" -> seconds, the latest measured transition
    prewarm-claim:<model>    STRING set while a lazy pre-warm of the model is in flight
    redelivered:<task id>    STRING how many times a request was delivered again (1 day)
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from warmstart.infra.redis_client import key, redis_errors


class WorkerRegistry:
    """Reads and writes worker and model state; every call is a few pipelined commands."""

    def __init__(self, client: "redis.Redis[str]") -> None:
        self.client = client

    # --- writes (workers) -----------------------------------------------------------------

    def heartbeat(self, worker: str, info: dict[str, Any], ttl_s: float) -> None:
        """Publish that ``worker`` is alive, with its budgets and use; expires after ttl_s."""
        payload = json.dumps({**info, "name": worker, "heartbeat_at": time.time()})
        with redis_errors(self.client, "sending a heartbeat"):
            pipe = self.client.pipeline()
            pipe.sadd(key("workers"), worker)
            pipe.set(key("worker", worker), payload, px=int(ttl_s * 1000))
            pipe.execute()

    def put_model(self, worker: str, state: dict[str, Any]) -> None:
        """Record one model's state on ``worker``; keeps the ``hot:<model>`` set in step."""
        model = state["model"]
        serving = state.get("tier") == "HOT" and state.get("consuming", False)
        with redis_errors(self.client, f"recording the state of {model!r}"):
            pipe = self.client.pipeline()
            pipe.hset(key("worker", worker, "models"), model, json.dumps(state))
            if serving:
                pipe.sadd(key("hot", model), worker)
            else:
                pipe.srem(key("hot", model), worker)
            pipe.execute()

    def remove_model(self, worker: str, model: str) -> None:
        with redis_errors(self.client, f"removing {model!r}"):
            pipe = self.client.pipeline()
            pipe.hdel(key("worker", worker, "models"), model)
            pipe.srem(key("hot", model), worker)
            pipe.execute()

    def forget_worker(self, worker: str) -> None:
        """Drop everything a worker published (clean shutdown, or declared dead)."""
        with redis_errors(self.client, f"forgetting worker {worker!r}"):
            models = self.client.hkeys(key("worker", worker, "models"))
            pipe = self.client.pipeline()
            for model in models:
                pipe.srem(key("hot", model), worker)
            pipe.delete(key("worker", worker), key("worker", worker, "models"))
            pipe.srem(key("workers"), worker)
            pipe.execute()

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

    def claim_prewarm(self, model: str, ttl_s: float) -> bool:
        """True for the one caller that may send a lazy pre-warm for ``model`` now."""
        with redis_errors(self.client, "claiming a pre-warm"):
            return bool(self.client.set(key("prewarm-claim", model), "1", nx=True, px=int(ttl_s * 1000)))

    def release_prewarm(self, model: str) -> None:
        with redis_errors(self.client, "releasing a pre-warm claim"):
            self.client.delete(key("prewarm-claim", model))

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
