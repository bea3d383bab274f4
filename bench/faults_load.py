"""The fault benchmark's load: the request plan, the client threads that send it at a fixed
rate and wait for the answers, the check of every answer against an in-process forward of
the same model on the same inputs, and the monitor that sees every answer a worker stores.

Counting (see docs/benchmarks.md):

* a request is **sent** once ``Client.submit`` returns; an exception from ``submit`` is a
  *send failure*, counted and retried (the request was not accepted, so it cannot be lost);
  a request still not sent after ``send_give_up_s`` is ``unsent``;
* a sent request ends in exactly one outcome: ``ok`` (answer matches the reference),
  ``wrong`` (an answer that does not), ``typed`` (the client raised a
  :class:`~warmstart.infra.errors.WarmstartError` other than a timeout), ``untyped`` (any other
  exception), or ``lost`` (:class:`~warmstart.infra.errors.InferenceTimeoutError`: nothing
  within the answer timeout);
* executions are seen by :class:`ExecutionMonitor`, which pattern-subscribes to the result
  backend's channels (Celery's Redis backend publishes every answer it stores there).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

#: Outcomes of one planned request.
OUTCOMES = ("ok", "wrong", "typed", "untyped", "lost", "unsent")
#: Celery's Redis result backend stores (and publishes) answers under this prefix.
RESULT_CHANNEL_PATTERN = "celery-task-meta-*"
_MESSAGE_CHARS = 300

Clock = Callable[[], float]


@dataclass(frozen=True)
class PlannedRequest:
    """One request of the plan: when to send it (seconds after the load starts), for which
    model, with which of the model's prepared inputs."""

    index: int
    at_s: float
    model: str
    input_index: int


def plan_requests(
    count: int, rate_per_s: float, shares: Mapping[str, float], inputs_per_model: int, seed: int
) -> list[PlannedRequest]:
    """``count`` requests evenly spaced at ``rate_per_s``, models drawn by ``shares`` (seeded,
    so every run sends the same sequence).

    Raises:
        ValueError: a count, rate or input count that is not positive, or no positive share.
    """
    if count < 1 or not rate_per_s > 0 or inputs_per_model < 1:
        raise ValueError("count, rate_per_s and inputs_per_model must be positive")
    names = [name for name, share in shares.items() if share > 0]
    if not names:
        raise ValueError("at least one model needs a positive traffic share")
    weights = [shares[name] for name in names]
    rng = random.Random(seed)
    return [
        PlannedRequest(i, i / rate_per_s, rng.choices(names, weights)[0], rng.randrange(inputs_per_model))
        for i in range(count)
    ]


@dataclass
class RequestRecord:
    """What happened to one planned request (times in seconds after the load started)."""

    index: int
    model: str
    input_index: int
    scheduled_s: float
    first_try_s: float | None = None
    accepted_s: float | None = None
    id: str | None = None
    send_failures: list[str] = field(default_factory=list)  # exception type of each failed send
    resends: int = 0  # times the client sent it again because the broker had lost it
    outcome: str = "pending"
    error_type: str | None = None
    error_message: str | None = None
    wait_started_s: float | None = None
    answered_s: float | None = None
    worker: str | None = None
    started_at: float | None = None
    max_abs_diff: float | None = None

    @property
    def latency_s(self) -> float | None:
        """Accepted -> answer (or typed error) in hand; None without one."""
        if self.answered_s is None or self.accepted_s is None or self.outcome not in ("ok", "wrong", "typed"):
            return None
        return self.answered_s - self.accepted_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "id": self.id, "model": self.model, "input_index": self.input_index,
            "outcome": self.outcome, "error_type": self.error_type, "error_message": self.error_message,
            "scheduled_s": self.scheduled_s, "first_try_s": self.first_try_s, "accepted_s": self.accepted_s,
            "wait_started_s": self.wait_started_s, "answered_s": self.answered_s, "latency_s": self.latency_s, "send_failures": list(self.send_failures), "resends": self.resends,
            "worker": self.worker, "started_at": self.started_at, "max_abs_diff": self.max_abs_diff,
        }  # fmt: skip


def classify_exception(error: BaseException) -> tuple[str, str]:
    """The outcome of a request whose wait raised ``error``, and the name it is counted under:
    ``lost`` for the client's timeout, ``typed`` for any other WarmstartError, else ``untyped``."""
    from warmstart.infra.errors import InferenceTimeoutError, WarmstartError

    if isinstance(error, InferenceTimeoutError):
        return "lost", type(error).__name__
    if isinstance(error, WarmstartError):
        return "typed", type(error).__name__
    return "untyped", f"{type(error).__module__}.{type(error).__name__}"


@dataclass(frozen=True)
class Reference:
    """One prepared request and the in-process answer to it."""

    inputs: dict[str, Any]  # name -> tensor
    outputs: dict[str, Any]  # name -> tensor
    rtol: float
    atol: float


def compare_outputs(got: Mapping[str, Any], want: Mapping[str, Any], rtol: float, atol: float) -> tuple[bool, float | None, str]:
    """Whether a worker's outputs match the reference: the same names and shapes, values
    within ``|got - want| <= atol + rtol * |want|``.

    Returns:
        (match, the largest absolute difference or None, why it does not match or "").
    """
    import torch

    if set(got) != set(want):
        return False, None, f"output names {sorted(got)} != {sorted(want)}"
    worst = 0.0
    for name, expected in want.items():
        actual = got[name]
        if tuple(actual.shape) != tuple(expected.shape):
            return False, None, f"output {name!r} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
        diff = (actual.double() - expected.double()).abs()
        if diff.numel():
            worst = max(worst, float(diff.max()))
        if not torch.allclose(actual.double(), expected.double(), rtol=rtol, atol=atol):
            return False, worst, f"output {name!r} differs by up to {worst:.3g} (rtol {rtol}, atol {atol})"
    return True, worst, ""


class LoadDriver:
    """Sends the plan from ``clients`` threads at its times and waits for every answer on a
    pool of ``waiters`` threads, filling one :class:`RequestRecord` per planned request."""

    def __init__(
        self,
        client: Any,
        plan: Sequence[PlannedRequest],
        references: Mapping[str, Sequence[Reference]],
        clock: Clock,
        *,
        clients: int,
        waiters: int,
        answer_timeout_s: float,
        send_give_up_s: float,
    ) -> None:
        self.client = client
        self.plan = list(plan)
        self.references = references
        self.clock = clock
        self.clients = clients
        self.answer_timeout_s = answer_timeout_s
        self.send_give_up_s = send_give_up_s
        self.records = [RequestRecord(p.index, p.model, p.input_index, p.at_s) for p in self.plan]
        #: exception type -> the first message seen, for send failures
        self.send_failure_messages: dict[str, str] = {}
        self._pool = ThreadPoolExecutor(max_workers=waiters, thread_name_prefix="faults-wait")
        self._futures: list[Future[None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._senders: list[threading.Thread] = []
        self._unanswered: list[Any] = []  # pending results whose wait ended without an answer

    def start(self) -> None:
        for k in range(self.clients):
            thread = threading.Thread(target=self._send_all, args=(self.plan[k :: self.clients],),
                                      name=f"faults-client-{k}", daemon=True)  # fmt: skip
            thread.start()
            self._senders.append(thread)

    def wait_sent(self, timeout_s: float) -> bool:
        """Wait for the client threads to have sent (or given up on) every request."""
        deadline = time.monotonic() + timeout_s
        for thread in self._senders:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._senders)

    def wait_answered(self, timeout_s: float) -> int:
        """Wait for every sent request's outcome; returns how many waits had not returned
        (their records are marked lost, with the reason)."""
        with self._lock:
            futures = list(self._futures)
        wait_futures(futures, timeout=timeout_s)
        stuck = 0
        for record in self.records:
            if record.outcome == "pending" and record.id is not None:
                record.outcome, record.error_type = "lost", "WaitDidNotReturn"
                record.error_message = "the benchmark's wait for this answer had not returned at the end of the run"
                stuck += 1
        return stuck

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def release(self) -> None:
        """Unregister the results that were never answered from Celery's result consumer, while
        Redis still runs: Celery keeps a timed-out result registered, and its ``__del__`` at
        interpreter exit would otherwise retry unsubscribing against a stopped Redis (about
        20 s per client thread)."""
        import gc

        with self._lock:
            unanswered, self._unanswered = self._unanswered, []
        for pending in unanswered:
            try:
                pending.result.backend.remove_pending_result(pending.result)
            except Exception:  # noqa: BLE001 - best effort, at teardown
                pass
        del unanswered
        gc.collect()

    # --- client threads -------------------------------------------------------------------

    def _send_all(self, plan: Sequence[PlannedRequest]) -> None:
        for planned in plan:
            record = self.records[planned.index]
            delay = planned.at_s - self.clock()
            if delay > 0 and self._stop.wait(delay):
                return
            self._send(planned, record)

    def _send(self, planned: PlannedRequest, record: RequestRecord) -> None:
        reference = self.references[planned.model][planned.input_index]
        record.first_try_s = self.clock()
        backoff_s = 0.05
        while True:
            try:
                pending = self.client.submit(planned.model, reference.inputs, timeout_s=self.answer_timeout_s)
            except Exception as e:  # noqa: BLE001 - any failure to send is counted and retried
                name = classify_exception(e)[1]
                record.send_failures.append(name)
                with self._lock:
                    self.send_failure_messages.setdefault(name, str(e)[:_MESSAGE_CHARS])
                if self.clock() - record.first_try_s >= self.send_give_up_s or self._stop.is_set():
                    record.outcome, record.error_type, record.error_message = "unsent", name, str(e)[:_MESSAGE_CHARS]
                    return
                time.sleep(backoff_s)
                backoff_s = min(1.0, backoff_s * 2)
                continue
            record.accepted_s, record.id = self.clock(), pending.id
            with self._lock:
                self._futures.append(self._pool.submit(self._wait, record, pending, reference))
            return

    def _wait(self, record: RequestRecord, pending: Any, reference: Reference) -> None:
        from warmstart.workers.wire import decode_outputs

        record.wait_started_s = self.clock()
        remaining = self.answer_timeout_s - (record.wait_started_s - (record.accepted_s or 0.0))
        try:
            answer = pending.raw(timeout_s=max(0.1, remaining))
        except Exception as e:  # noqa: BLE001 - every outcome is counted, whatever it is
            record.resends = int(getattr(pending, "resends", 0))
            record.outcome, record.error_type = classify_exception(e)
            record.error_message = str(e)[:_MESSAGE_CHARS]
            if record.outcome != "lost":
                record.answered_s = self.clock()
            if record.outcome in ("lost", "untyped"):
                with self._lock:
                    self._unanswered.append(pending)
            return
        record.answered_s = self.clock()
        record.resends = int(getattr(pending, "resends", 0))
        record.worker = answer.get("worker")
        started = answer.get("started_at")
        record.started_at = float(started) if isinstance(started, (int, float)) else None
        try:
            outputs = decode_outputs(answer["outputs"])
            match, worst, why = compare_outputs(outputs, reference.outputs, reference.rtol, reference.atol)
        except Exception as e:  # noqa: BLE001 - an answer that cannot be read is a wrong answer
            match, worst, why = False, None, f"the answer's outputs could not be read: {type(e).__name__}: {e}"
        if match and answer.get("model") != record.model:
            match, why = False, f"answered by model {answer.get('model')!r}"
        record.max_abs_diff = worst
        record.outcome = "ok" if match else "wrong"
        if not match:
            record.error_message = why[:_MESSAGE_CHARS]


# --- executions, seen from the result backend ------------------------------------------------


def execution_from_message(channel: str, data: bytes | str) -> tuple[str, dict[str, Any]] | None:
    """(task id, what an answer published on ``channel`` says about its execution), or None
    for a message that is not a stored task result."""
    try:
        meta = json.loads(data)
    except (TypeError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    task_id = meta.get("task_id") or channel.removeprefix(RESULT_CHANNEL_PATTERN[:-1])
    result = meta.get("result")
    seen: dict[str, Any] = {"status": meta.get("status")}
    if isinstance(result, dict):
        error = result.get("error")
        seen.update(ok=bool(result.get("ok")), worker=result.get("worker"), started_at=result.get("started_at"),
                    error_type=error.get("type") if isinstance(error, dict) else None)  # fmt: skip
    return str(task_id), seen


def count_executions(observed: Mapping[str, Sequence[Mapping[str, Any]]], ids: Iterable[str]) -> dict[str, Any]:
    """Executions of each request that stored an answer, from the monitor's observations.

    Two stored answers of one request are two executions when they differ: a successful one
    is identified by (worker, started_at); an error answer carries neither, so each stored
    error answer counts as its own execution. The same (worker, started_at) stored twice is
    one execution stored twice (``restored_twice``), not a duplicate.
    """
    executions = duplicates = more_than_once = restored_twice = 0
    examples: list[dict[str, Any]] = []
    for task_id in ids:
        seen = observed.get(task_id, ())
        keys: set[tuple[Any, ...]] = set()
        for i, item in enumerate(seen):
            if item.get("ok") and item.get("worker") is not None:
                key: tuple[Any, ...] = ("ok", item.get("worker"), item.get("started_at"))
                if key in keys:
                    restored_twice += 1
                keys.add(key)
            else:
                keys.add(("not-ok", i))
        executions += len(keys)
        if len(keys) > 1:
            duplicates += len(keys) - 1
            more_than_once += 1
            if len(examples) < 20:
                examples.append({"id": task_id, "executions": [dict(item) for item in seen]})
    return {
        "executions_observed": executions,
        "duplicates_executed": duplicates,
        "requests_executed_more_than_once": more_than_once,
        "stored_twice_same_execution": restored_twice,
        "duplicate_examples": examples,
    }


class ExecutionMonitor:
    """Pattern-subscribes to the result backend's channels on its own connection and keeps,
    per task id, what every stored answer says (worker, started_at, ok). While Redis is down
    it cannot see anything: those intervals are kept in :attr:`gaps`."""

    def __init__(self, redis_url: str, clock: Clock) -> None:
        self.redis_url = redis_url
        self.clock = clock
        self.observed: dict[str, list[dict[str, Any]]] = {}
        self.gaps: list[list[float | None]] = []
        self.messages = 0
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-monitor", daemon=True)

    def start(self, timeout_s: float = 10.0) -> "ExecutionMonitor":
        self._thread.start()
        self._subscribed.wait(timeout_s)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.gaps and self.gaps[-1][1] is None:
            self.gaps[-1][1] = self.clock()

    def _run(self) -> None:
        import redis

        while not self._stop.is_set():
            pubsub = None
            try:
                client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1.0, socket_timeout=5.0)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(RESULT_CHANNEL_PATTERN)
                pubsub.get_message(timeout=0.5)  # the subscription's confirmation: connected now
                if self.gaps and self.gaps[-1][1] is None:
                    self.gaps[-1][1] = self.clock()
                self._subscribed.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "pmessage":
                        self._record(message)
            except (redis.RedisError, OSError):
                if not self.gaps or self.gaps[-1][1] is not None:
                    self.gaps.append([self.clock(), None])
                self._stop.wait(0.1)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001 - closing a broken connection
                        pass

    def _record(self, message: Mapping[str, Any]) -> None:
        channel = message.get("channel")
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        parsed = execution_from_message(channel, message.get("data", b""))
        if parsed is None:
            return
        task_id, seen = parsed
        seen["t_s"] = self.clock()
        self.messages += 1
        self.observed.setdefault(task_id, []).append(seen)
