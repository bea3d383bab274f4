"""What the fault benchmark observes besides the answers: Redis's memory and the workers'
RSS every second, what Redis holds at the end, what the workers counted as redelivered, and
a summary of each child process's log."""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Clock = Callable[[], float]


def parse_vmrss(status: str) -> int | None:
    """Resident set size in bytes from the text of ``/proc/<pid>/status`` (``VmRSS: N kB``)."""
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def rss_bytes(pid: int) -> int | None:
    """A process's resident set size (psutil when installed, else /proc), None if it is gone."""
    try:
        import psutil
    except ImportError:
        try:
            return parse_vmrss(Path(f"/proc/{pid}/status").read_text())
        except OSError:
            return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


_LEVEL = re.compile(r"\b(CRITICAL|ERROR|WARNING)\b")
_VARYING = re.compile(r"0x[0-9a-f]+|[0-9a-f]{8}-[0-9a-f-]{27,}|\d+(\.\d+)?")


def log_summary(text: str, tail_lines: int = 40, top: int = 15) -> dict[str, Any]:
    """What a child process logged: lines per level, its most frequent WARNING-or-worse
    messages (numbers and ids blanked so that repeats group), Tracebacks, and the last lines."""
    lines = text.splitlines()
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for line in lines:
        match = _LEVEL.search(line)
        if match:
            levels[match.group(1)] += 1
            head = _VARYING.sub("#", line[match.start():])[:160]
            messages[head] += 1
    return {
        "lines": len(lines),
        "by_level": dict(levels),
        "tracebacks": sum(1 for line in lines if line.startswith("Traceback")),
        "top_messages": [[count, message] for message, count in messages.most_common(top)],
        "tail": lines[-tail_lines:],
    }


def key_group(name: str) -> str:
    """The family of a Redis key, for counting what Redis holds (``ws:traffic:*``,
    ``celery-task-meta-*``, ``infer.*``...)."""
    if name.startswith("ws:"):
        return "ws:" + name.split(":")[1] + ":*"
    for prefix in ("celery-task-meta-", "_kombu.binding."):
        if name.startswith(prefix):
            return prefix + "*"
    if "." in name:
        return name.split(".", 1)[0] + ".*"
    return name


def redis_keys(redis_url: str, max_sized: int = 5000) -> dict[str, dict[str, int]]:
    """Keys per family and their bytes (``MEMORY USAGE``, for the first ``max_sized`` keys)."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5.0, decode_responses=True)
    groups: dict[str, dict[str, int]] = {}
    try:
        for i, name in enumerate(client.scan_iter(count=1000)):
            group = groups.setdefault(key_group(name), {"keys": 0, "bytes": 0})
            group["keys"] += 1
            if i < max_sized:
                group["bytes"] += int(client.memory_usage(name) or 0)
    except redis.RedisError as e:
        groups["error"] = {"keys": 0, "bytes": 0, "message": str(e)}  # type: ignore[dict-item]
    return groups


def redelivered(redis_url: str, ids: list[str]) -> dict[str, int]:
    """What the workers counted in ``ws:redelivered:<id>`` for these requests (since the last
    Redis restart, which empties it): requests redelivered, and redeliveries in all."""
    import redis

    from warmstart.infra.redis_client import key

    client = redis.Redis.from_url(redis_url, socket_timeout=5.0, decode_responses=True)
    counts: list[int] = []
    try:
        for start in range(0, len(ids), 500):
            values = client.mget([key("redelivered", i) for i in ids[start : start + 500]])
            counts += [int(v) for v in values if v is not None]
    except redis.RedisError:
        return {"requests": -1, "redeliveries": -1}
    return {"requests": len(counts), "redeliveries": sum(counts)}


class Sampler:
    """Every ``interval_s``: Redis's ``used_memory`` (None while it is down) and the RSS of
    every live worker process and of this process."""

    def __init__(self, redis_url: Callable[[], str], workers: Callable[[], Mapping[str, int]], clock: Clock,
                 interval_s: float = 1.0) -> None:  # fmt: skip
        self.redis_url = redis_url
        self.workers = workers
        self.clock = clock
        self.interval_s = interval_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-sampler", daemon=True)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _redis_used(self) -> int | None:
        import redis

        try:
            client = redis.Redis.from_url(self.redis_url(), socket_connect_timeout=0.5, socket_timeout=1.0)
            try:
                return int(client.info("memory")["used_memory"])
            finally:
                client.close()
        except (redis.RedisError, OSError, KeyError, ValueError):
            return None

    def _run(self) -> None:
        while True:
            sample = {"t_s": self.clock(), "redis_used_bytes": self._redis_used(),
                      "workers_rss_bytes": {name: rss_bytes(pid) for name, pid in self.workers().items()},
                      "client_rss_bytes": rss_bytes(os.getpid())}  # fmt: skip
            self.samples.append(sample)
            if self._stop.wait(self.interval_s):
                return


def unacked_ids(entries: Mapping[str, str]) -> list[str]:
    """Task ids of kombu's ``unacked`` hash entries (``[message, exchange, routing_key]`` JSON,
    the message's ``headers.id`` or ``properties.correlation_id``)."""
    import json

    ids = []
    for raw in entries.values():
        try:
            message = json.loads(raw)[0]
            task_id = (message.get("headers") or {}).get("id") or (message.get("properties") or {}).get("correlation_id")
        except (ValueError, TypeError, IndexError, AttributeError):
            continue
        if task_id:
            ids.append(str(task_id))
    return sorted(ids)


def unacked_snapshot(redis_url: str) -> dict[str, Any]:
    """What the broker holds as delivered but not acknowledged (kombu's ``unacked`` hash: a
    killed worker's requests wait there for the visibility timeout), and whether the mutex
    that guards their restore is held (its TTL in seconds)."""
    import redis

    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=2.0, decode_responses=True)
        ids = unacked_ids(client.hgetall("unacked"))
        ttl = client.pttl("unacked_mutex")
    except redis.RedisError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {"unacked_ids": ids, "unacked_mutex_ttl_s": ttl / 1000 if ttl and ttl > 0 else None}
