"""The Python client: enqueue inference, record the arrival, wake a worker when none is hot.

``Client(settings).infer("short-form", {"user_features": tensor, ...}, timeout_s=10)`` returns
the model's outputs as tensors, or raises the typed error the worker answered with. Any
other Celery client can speak the same wire protocol (docs/workers.md).
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

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
    StoreError,
    UnknownModelError,
    WarmstartError,
    error_from_dict,
)
from warmstart.infra.redis_client import connect
from warmstart.infra.settings import Settings
from warmstart.workers.arrivals import ArrivalRecorder
from warmstart.snapshot.catalog import resolve_version
from warmstart.snapshot.names import validate_name
from warmstart.snapshot.stores import open_store
from warmstart.workers.registry import WorkerRegistry
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


class PendingInference:
    """An enqueued request; :meth:`get` waits for its answer."""

    def __init__(self, result: AsyncResult, model: str, default_timeout_s: float, cold: bool = False) -> None:
        self.result = result
        self.model = model
        self.default_timeout_s = default_timeout_s
        #: True when no worker held the model HOT as the request was sent (a cold start).
        self.cold = cold
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
                answer = self.result.get(timeout=wait, propagate=True, interval=0.005)
            except CeleryTimeoutError as e:
                raise InferenceTimeoutError(
                    f"no answer from {self.model!r} within {wait}s; the request stays queued and will "
                    "still be answered. Is a worker running (`warmstart status`)?"
                ) from e
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

    def _forget(self) -> None:
        try:
            self.result.forget()
        except Exception as e:  # the answer is in hand; the TTL removes it from Redis anyway
            log.warning("could not delete the answer to %s from Redis: %s", self.id, e)

    def get(self, timeout_s: float | None = None) -> dict[str, torch.Tensor]:
        """The model's outputs as tensors."""
        return decode_outputs(self.raw(timeout_s)["outputs"])


class ArrivalBuffer:
    """Records arrivals off the request path: ``add`` only appends; a background thread sends
    them to Redis in one pipelined round trip every ``flush_s`` (the scheduler works in whole
    minutes, so a few milliseconds of delay change nothing)."""

    def __init__(self, recorder: ArrivalRecorder, flush_s: float = 0.05) -> None:
        self.recorder = recorder
        self.flush_s = flush_s
        self._pending: list[tuple[str, int, float]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="warmstart-arrivals", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def add(self, model: str) -> None:
        with self._lock:
            self._pending.append((model, 1, time.time()))

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            try:
                self.recorder.record_many(batch)
            except WarmstartError as e:  # traffic statistics must never fail a request
                log.warning("could not record %d arrivals: %s", len(batch), e)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_s)
            self.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._wake.set()
            self._thread.join(timeout=5)
            self.flush()


class Client:
    """Sends inference requests; one per process is enough (thread-safe)."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or create_app(settings)
        redis_client = connect(settings.redis_url)
        self.registry = WorkerRegistry(redis_client)
        self.traffic = ArrivalRecorder(redis_client, settings.traffic_retention_min, settings.traffic_minute_s)
        self.arrivals = ArrivalBuffer(self.traffic)
        self._store = None
        self._known: dict[str, float] = {}
        self._store_down_until = 0.0
        self._hot_until: dict[str, float] = {}
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
        now = time.monotonic()
        if self._hot_until.get(model, 0.0) > now:
            return True
        if self.registry.hot_workers(model):
            self._hot_until[model] = now + HOT_TTL_S
            return True
        return False

    def encode_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Tensors become the wire form; nested lists travel as they are."""
        if not isinstance(inputs, Mapping):
            raise InvalidInputError("inputs must map input names to tensors or nested lists")
        return {name: encode_tensor(v) if isinstance(v, torch.Tensor) else v for name, v in inputs.items()}

    def submit(self, model: str, inputs: Mapping[str, Any], *, timeout_s: float | None = None) -> PendingInference:
        """Enqueue one request and return at once.

        Records the arrival (the scheduler's traffic) and, when no worker holds the model HOT,
        sends one lazy pre-warm that a worker with room takes: the request waits in its queue
        and is answered as soon as a worker joins it.

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
        self.arrivals.add(model)
        claim = self.registry.claim_prewarm(model, self.settings.prewarm_claim_s) if cold else None
        if claim:
            # The claim's token is the task's id: the pre-warm releases its own claim, no other.
            self.app.send_task(TASK_PREWARM, kwargs={"model": model, "tier": "HOT", "lazy": True},
                               queue=PREWARM_QUEUE, task_id=claim)  # fmt: skip
        result = self.app.send_task(TASK_INFER, kwargs={"model": model, "inputs": payload}, queue=infer_queue(model))
        wait_s = self.settings.inference_timeout_s if timeout_s is None else timeout_s
        return PendingInference(result, model, wait_s, cold=cold)

    def close(self) -> None:
        """Send the arrivals not yet recorded (also done at interpreter exit)."""
        self.arrivals.close()

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
