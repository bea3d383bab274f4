"""The Python client: enqueue inference, wake a worker when none is hot, wait for the answer.

``Client(settings).infer("short-form", {"user_features": tensor, ...}, timeout_s=10)`` returns
the model's outputs as tensors, or raises the typed error the worker answered with. Any
other Celery client can speak the same wire protocol (docs/workers.md).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import kombu.exceptions
import redis
import torch
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from warmstart.infra.celery_app import (
    PREWARM_QUEUE,
    TASK_INFER,
    TASK_PREWARM,
    broker_message_bytes,
    create_app,
    infer_queue,
)
from warmstart.infra.errors import (
    InferenceTimeoutError,
    InvalidInputError,
    PayloadTooLargeError,
    SnapshotNotFoundError,
    StateUnavailableError,
    StoreError,
    UnknownModelError,
    WarmstartError,
    error_from_dict,
)
from warmstart.infra.redis_client import connect
from warmstart.infra.settings import Settings
from warmstart.workers.delivery import RequestTracker
from warmstart.snapshot.catalog import resolve_version
from warmstart.snapshot.names import validate_name
from warmstart.snapshot.stores import open_store
from warmstart.workers.registry import ServedCache, WorkerRegistry
from warmstart.workers.wire import base64_length, decode_outputs, encode_tensor, input_nbytes

log = logging.getLogger(__name__)

#: How long a positive "this model is published" answer is trusted.
KNOWN_MODEL_TTL_S = 30.0
#: After the store failed to answer, how long requests for models no worker serves are sent
#: without asking it again (each ask would wait for its connect timeout).
STORE_RETRY_S = 5.0
#: How long "a worker serves this model" is trusted. A request sent in that second to a model
#: whose worker just stopped serving it is not lost: the worker asks for a pre-warm when it
#: leaves with requests waiting (ModelPool.rescue_queue), the beat does for any queue with
#: requests and no worker, and the next request after the second sends one itself.
HOT_TTL_S = 1.0
#: JSON of an infer task's body around its inputs (task arguments, names, brackets).
_BODY_OVERHEAD_BYTES = 256


def check_request_size(inputs: Mapping[str, Any], *, max_payload_bytes: int, max_message_bytes: int) -> None:
    """Refuse, before encoding or sending anything, a request a worker would refuse: tensors
    (and ``{"dtype", "shape", "data"}`` objects, by their declared shape) totalling more than
    ``max_payload_bytes``, or a message larger than ``max_message_bytes`` on the broker.

    Raises:
        PayloadTooLargeError: naming the limit and its setting.
        InvalidInputError: an input that cannot be sent (a malformed wire object, not JSON).
    """
    tensor_bytes = 0
    body = _BODY_OVERHEAD_BYTES
    for name, value in inputs.items():
        nbytes = input_nbytes(name, value, max_payload_bytes)
        if nbytes is not None:
            tensor_bytes += nbytes
            data = value.get("data") if isinstance(value, dict) else None
            body += (len(data) if isinstance(data, str) else base64_length(nbytes)) + 96 + len(name)
        else:
            try:
                body += len(json.dumps(value)) + 8 + len(name)
            except (TypeError, ValueError) as e:
                raise InvalidInputError(f"input {name!r} cannot be sent as JSON: {e}") from e
        if tensor_bytes > max_payload_bytes:
            raise PayloadTooLargeError(
                f"the inputs total more than {max_payload_bytes} bytes (WARMSTART_MAX_PAYLOAD_BYTES); "
                "send smaller batches"
            )
    message = broker_message_bytes(body)
    if message > max_message_bytes:
        raise PayloadTooLargeError(
            f"the request would be about {message} bytes on the broker, over WARMSTART_MAX_MESSAGE_BYTES "
            f"({max_message_bytes}); send smaller batches, as tensors rather than nested lists"
        )


#: While a request is missing from everywhere, look again this often before re-sending it.
_MISSING_RECHECK_S = 1.0
#: Broker or backend errors a wait rides out (Redis restarting, a connection reset).
_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, kombu.exceptions.OperationalError, OSError)


class PendingInference:
    """An enqueued request; :meth:`get` waits for its answer, and re-sends the request if the
    broker lost it (see :mod:`warmstart.workers.delivery`)."""

    def __init__(
        self,
        result: AsyncResult,
        model: str,
        default_timeout_s: float,
        cold: bool = False,
        *,
        tracker: RequestTracker | None = None,
        resend: Callable[[], None] | None = None,
        check_after_s: float = 5.0,
        max_resends: int = 0,
    ) -> None:
        self.result = result
        self.model = model
        self.default_timeout_s = default_timeout_s
        #: True when no worker held the model HOT as the request was sent (a cold start).
        self.cold = cold
        #: How many times the request was sent again because the broker had lost it.
        self.resends = 0
        self._tracker = tracker
        self._resend = resend
        self._check_after_s = check_after_s
        self._max_resends = max_resends
        self._answer: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return str(self.result.id)

    def raw(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The worker's JSON answer (outputs still encoded), or the typed error raised.

        Once read, the answer is deleted from Redis (it is kept here for later calls); an
        answer nobody reads expires after ``WARMSTART_RESULT_TTL_S``.
        """
        if self._answer is None:
            wait = self.default_timeout_s if timeout_s is None else timeout_s
            try:
                answer = self._wait(wait)
            except InferenceTimeoutError:
                raise
            except Exception:  # a task failure Celery stored: read, so delete it too
                self._forget()
                raise
            self._forget()
            if not isinstance(answer, dict):
                raise WarmstartError(f"unexpected answer from the worker: {answer!r}")
            self._answer = answer
        if not self._answer.get("ok"):
            raise error_from_dict(self._answer.get("error", {}))
        return self._answer

    def _wait(self, wait_s: float) -> Any:
        """Wait for the answer in slices; between them, make sure the request still exists."""
        deadline = time.monotonic() + wait_s
        next_check = time.monotonic() + self._check_after_s
        missing_since: float | None = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                resent = f" (sent again {self.resends} times: the broker had lost it)" if self.resends else ""
                raise InferenceTimeoutError(
                    f"no answer from {self.model!r} within {wait_s}s{resent}; it may still be answered "
                    "later. Is a worker running (`warmstart status`)?"
                )
            try:
                return self.result.get(timeout=max(0.01, min(left, next_check - time.monotonic())),
                                       propagate=True, interval=0.005)  # fmt: skip
            except CeleryTimeoutError:
                pass
            except _TRANSIENT as e:  # Redis restarting: ride it out until the deadline
                log.warning("waiting for %s: %s; retrying", self.id, e)
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            if self._tracker is None or self._resend is None or time.monotonic() < next_check:
                continue
            missing_since = self._check_presence(missing_since)
            next_check = time.monotonic() + (_MISSING_RECHECK_S if missing_since else self._check_after_s)

    def _check_presence(self, missing_since: float | None) -> float | None:
        """Look for the request; send it again when it has been missing for a while.
        Returns when it was first seen missing (None: it is somewhere)."""
        try:
            where = self._tracker.locate(self.id, infer_queue(self.model))  # type: ignore[union-attr]
        except WarmstartError as e:
            log.warning("could not look for request %s: %s", self.id, e)
            return missing_since
        if where != "missing":
            return None
        now = time.monotonic()
        if missing_since is None or now - missing_since < _MISSING_RECHECK_S:
            return missing_since or now
        if self.resends >= self._max_resends:
            return missing_since
        log.warning("request %s for %r is in no queue, not running and not answered: sending it again",
                    self.id, self.model)  # fmt: skip
        try:
            self._resend()  # type: ignore[misc]
            self.resends += 1
        except (WarmstartError, *_TRANSIENT) as e:
            log.warning("could not send request %s again: %s", self.id, e)
        return None

    def _forget(self) -> None:
        try:
            self.result.forget()
        except Exception as e:  # the answer is in hand; the TTL removes it from Redis anyway
            log.warning("could not delete the answer to %s from Redis: %s", self.id, e)

    def get(self, timeout_s: float | None = None) -> dict[str, torch.Tensor]:
        """The model's outputs as tensors."""
        return decode_outputs(self.raw(timeout_s)["outputs"])


class Client:
    """Sends inference requests; one per process is enough (thread-safe)."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or create_app(settings)
        redis_client = connect(settings.redis_url)
        self.registry = WorkerRegistry(redis_client)
        self.tracker = RequestTracker(redis_client)
        self._store = None
        self._known: dict[str, float] = {}
        self._store_down_until = 0.0
        self._serving = ServedCache(self.registry, HOT_TTL_S)
        self._lock = threading.Lock()

    def _check_published(self, model: str) -> None:
        """Refuse a model the store says is not published. A store that cannot be asked is
        no reason to refuse: the request is sent anyway (a worker that holds the model can
        serve it, and one that cannot answers the cause)."""
        now = time.monotonic()
        if self._known.get(model, 0.0) > now or self._store_down_until > now:
            return
        try:
            with self._lock:
                if self._store is None:
                    self._store = open_store(self.settings)
            resolve_version(self._store, model, "live")
        except SnapshotNotFoundError as e:
            raise UnknownModelError(f"model {model!r} is not published: {e}") from e
        except StoreError as e:
            self._store_down_until = now + STORE_RETRY_S
            log.warning("could not ask the store whether %r is published (%s); sending the request anyway", model, e)
            return
        self._known[model] = now + KNOWN_MODEL_TTL_S

    def _served(self, model: str) -> bool:
        return self._serving.served(model)

    def encode_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Tensors become the wire form; nested lists travel as they are."""
        if not isinstance(inputs, Mapping):
            raise InvalidInputError("inputs must map input names to tensors or nested lists")
        return {name: encode_tensor(v) if isinstance(v, torch.Tensor) else v for name, v in inputs.items()}

    def submit(self, model: str, inputs: Mapping[str, Any], *, timeout_s: float | None = None) -> PendingInference:
        """Enqueue one request and return at once.

        When no worker holds the model HOT, sends one lazy pre-warm that a worker with room
        takes: the request waits in its queue and is answered as soon as a worker joins it.
        (The beat sends the same pre-warm for any client, under the same claim, so never two;
        sending it here saves the beat's hop and works without a beat.) The arrival itself is
        recorded by the beat from the queue, whoever sent the request.

        The store is asked whether the model is published only when no worker serves it:
        serving what is HOT does not depend on the store.

        Raises:
            InvalidNameError: the model name is not a safe name.
            UnknownModelError: no worker serves the model and the store says it is not published.
            PayloadTooLargeError: the request is over WARMSTART_MAX_PAYLOAD_BYTES or
                WARMSTART_MAX_MESSAGE_BYTES (checked before anything is encoded).
        """
        validate_name(model)
        if not isinstance(inputs, Mapping):
            raise InvalidInputError("inputs must map input names to tensors or nested lists")
        cold = not self._served(model)
        if cold:
            self._check_published(model)
        check_request_size(
            inputs, max_payload_bytes=self.settings.max_payload_bytes, max_message_bytes=self.settings.max_message_bytes
        )
        payload = self.encode_inputs(inputs)
        claim = self.registry.claim_prewarm(model, self.settings.prewarm_claim_s) if cold else None
        if claim:
            # The claim's token is the task's id: the pre-warm releases its own claim, no other.
            self._send(TASK_PREWARM, {"model": model, "tier": "HOT", "lazy": True}, PREWARM_QUEUE, task_id=claim)
        kwargs = {"model": model, "inputs": payload}
        result = self._send(TASK_INFER, kwargs, infer_queue(model))

        def resend() -> None:
            self._send(TASK_INFER, kwargs, infer_queue(model), task_id=str(result.id))

        wait_s = self.settings.inference_timeout_s if timeout_s is None else timeout_s
        return PendingInference(
            result, model, wait_s, cold=cold, tracker=self.tracker, resend=resend,
            check_after_s=self.settings.request_check_s, max_resends=self.settings.max_deliveries,
        )  # fmt: skip

    def _send(self, task: str, kwargs: dict[str, Any], queue: str, task_id: str | None = None) -> AsyncResult:
        """Send one task.

        Raises:
            StateUnavailableError: the broker cannot be reached; nothing was sent.
        """
        try:
            return self.app.send_task(task, kwargs=kwargs, queue=queue, task_id=task_id)
        except _TRANSIENT as e:
            raise StateUnavailableError(
                f"could not send {task} to {queue}: the broker is unreachable ({e}). Check "
                "WARMSTART_REDIS_URL and that redis-server is running, then retry"
            ) from e

    def close(self) -> None:
        """Nothing to flush: arrivals are recorded by the beat from the queues
        (:mod:`warmstart.scheduler.queue_watch`). Kept so that callers need not change."""

    def infer(self, model: str, inputs: Mapping[str, Any], timeout_s: float | None = None) -> dict[str, torch.Tensor]:
        """Enqueue one request and wait for its outputs (see :meth:`submit`)."""
        return self.submit(model, inputs, timeout_s=timeout_s).get()

    async def infer_async(
        self, model: str, inputs: Mapping[str, Any], timeout_s: float | None = None
    ) -> dict[str, torch.Tensor]:
        """:meth:`infer` for asyncio code: the wait runs in the loop's default executor, so
        the event loop is never blocked."""
        import asyncio

        pending = self.submit(model, inputs, timeout_s=timeout_s)
        return await asyncio.get_running_loop().run_in_executor(None, pending.get)
