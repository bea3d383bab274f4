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

from warmstart.infra.celery_app import PREWARM_QUEUE, TASK_INFER, TASK_PREWARM, create_app, infer_queue
from warmstart.infra.errors import (
    InferenceTimeoutError,
    InvalidInputError,
    SnapshotNotFoundError,
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
from warmstart.workers.wire import check_payload_size, decode_outputs, encode_tensor

log = logging.getLogger(__name__)

#: How long a positive "this model is published" answer is trusted.
KNOWN_MODEL_TTL_S = 30.0
#: How long "a worker serves this model" is trusted. A request sent in that second to a model
#: whose worker just stopped serving it is not lost: the worker asks for a pre-warm when it
#: leaves with requests waiting (ModelPool.rescue_queue), the beat does for any queue with
#: requests and no worker, and the next request after the second sends one itself.
HOT_TTL_S = 1.0


def encoded_size(payload: Mapping[str, Any]) -> int:
    """About the encoded size of a request: the base64 data of tensors, the JSON of the rest
    (without serialising megabytes of base64 a second time)."""
    total = 0
    for value in payload.values():
        if isinstance(value, dict) and isinstance(value.get("data"), str):
            total += len(value["data"]) + 64
        else:
            total += len(json.dumps(value))
    return total


class PendingInference:
    """An enqueued request; :meth:`get` waits for its answer."""

    def __init__(self, result: AsyncResult, model: str, default_timeout_s: float, cold: bool = False) -> None:
        self.result = result
        self.model = model
        self.default_timeout_s = default_timeout_s
        #: True when no worker held the model HOT as the request was sent (a cold start).
        self.cold = cold

    @property
    def id(self) -> str:
        return str(self.result.id)

    def raw(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The worker's JSON answer (outputs still encoded), or the typed error raised."""
        wait = self.default_timeout_s if timeout_s is None else timeout_s
        try:
            answer = self.result.get(timeout=wait, propagate=True, interval=0.005)
        except CeleryTimeoutError as e:
            raise InferenceTimeoutError(
                f"no answer from {self.model!r} within {wait}s; the request stays queued and will "
                "still be answered. Is a worker running (`warmstart status`)?"
            ) from e
        if not isinstance(answer, dict):
            raise WarmstartError(f"unexpected answer from the worker: {answer!r}")
        if not answer.get("ok"):
            raise error_from_dict(answer.get("error", {}))
        return answer

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
        self._hot_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def _check_published(self, model: str) -> None:
        now = time.monotonic()
        if self._known.get(model, 0.0) > now:
            return
        with self._lock:
            if self._store is None:
                self._store = open_store(self.settings)
        try:
            resolve_version(self._store, model, "live")
        except SnapshotNotFoundError as e:
            raise UnknownModelError(f"model {model!r} is not published: {e}") from e
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

        Raises:
            InvalidNameError: the model name is not a safe name.
            UnknownModelError: no such model is published.
            PayloadTooLargeError: the encoded request is far over the size limit.
        """
        validate_name(model)
        self._check_published(model)
        payload = self.encode_inputs(inputs)
        check_payload_size(encoded_size(payload), self.settings.max_payload_bytes)
        self.arrivals.add(model)
        cold = not self._served(model)
        if cold and self.registry.claim_prewarm(model, self.settings.prewarm_claim_s):
            self.app.send_task(TASK_PREWARM, kwargs={"model": model, "tier": "HOT", "lazy": True}, queue=PREWARM_QUEUE)
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
