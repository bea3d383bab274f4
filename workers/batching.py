"""Dynamic batching: concurrent requests for one model on one worker run as one forward.

A request thread that has decoded and checked its inputs calls :meth:`Batcher.run`. The first
request of a batch becomes its *leader*: it waits until ``max_batch`` requests have joined or
``max_wait_ms`` has passed, concatenates the inputs along the ``batch`` dimension, runs the
forward, splits the outputs back and hands every request its own slice. The others wait for
their answer. No extra thread is needed, and a lone request waits at most ``max_wait_ms``.

Which requests go together: those with the same module (so a demotion or a new version never
mixes) and the same sizes of every dimension except ``batch``, unless a dimension can be
padded: a dynamic dimension (``seq``) that every input having it declares a ``pad`` value
for. Shorter requests are then padded on the right with that value, and each output axis at
the same position as the padded input axis, of the padded size, is cut back to the request's
own size (``last_hidden_state[b, seq, h]`` of a request of 5 tokens has 5 positions).

A bad request fails alone: inputs are checked before a request joins, outputs are checked per
request by the caller, and when the batched forward raises, the leader runs each request of
the batch by itself, so that only the request that fails gets the error.

Batches of one module run one at a time: while one runs, the next stays open and grows (up
to ``max_batch``), so under load batches grow instead of forwards competing for the cores,
and a lone request still waits at most ``max_wait_ms`` (plus a forward in progress).

Locking: :attr:`Batcher._lock` guards the open batches and the per-module run locks (dict
operations only, never held while running a forward or waiting). A module's run lock is held
by the leader of the batch that runs its forward, and by nothing else. Both are independent
of the pool's locks (see ``workers/pool.py``): a request waits in a batch holding its lease,
never a slot's lock, and no pool lock is taken while either is held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from warmstart.infra.settings import Settings
from warmstart.snapshot.manifest import InputSpec, Manifest

Inputs = Mapping[str, torch.Tensor]
Outputs = dict[str, torch.Tensor]
Forward = Callable[[Inputs], Outputs]


@dataclass
class _Request:
    inputs: Inputs
    size: int
    done: threading.Event = field(default_factory=threading.Event)
    outputs: Outputs | None = None
    error: BaseException | None = None
    batch_size: int = 1


@dataclass
class _Batch:
    requests: list[_Request]
    full: threading.Event = field(default_factory=threading.Event)
    closed: bool = False


def batching_of(manifest: Manifest, settings: Settings) -> tuple[int, float]:
    """``(max_batch, max_wait_ms)`` for a model: its manifest's, overridden by the settings
    (``WARMSTART_MAX_BATCH`` when > 0, ``WARMSTART_MAX_WAIT_MS`` when set); (1, 0) is off."""
    max_batch = settings.max_batch or int(manifest.batching.get("max_batch", 1))
    wait = settings.max_wait_ms if settings.max_wait_ms is not None else manifest.batching.get("max_wait_ms", 0)
    return max_batch, float(wait)


def batch_axis(specs: Sequence[InputSpec]) -> dict[str, int] | None:
    """Each input's ``batch`` axis; None when an input has none (the model is not batched)."""
    axes = {}
    for spec in specs:
        if "batch" not in spec.shape:
            return None
        axes[spec.name] = spec.shape.index("batch")
    return axes


def paddable_dims(specs: Sequence[InputSpec]) -> set[str]:
    """Dynamic dimensions (not ``batch``) that every input having them declares a pad for."""
    dims: dict[str, bool] = {}
    for spec in specs:
        for d in spec.shape:
            if isinstance(d, str) and d != "batch":
                dims[d] = dims.get(d, True) and spec.pad is not None
    return {d for d, ok in dims.items() if ok}


class Batcher:
    """The open batches of one worker, for every model (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[Any, ...], _Batch] = {}
        self._running: dict[int, threading.Lock] = {}  # by id(module): a few bytes per module ever seen

    def _running_lock(self, module: object) -> threading.Lock:
        with self._lock:
            lock = self._running.get(id(module))
            if lock is None:
                lock = self._running[id(module)] = threading.Lock()
            return lock

    def run(
        self,
        module_key: object,
        inputs: Inputs,
        specs: Sequence[InputSpec],
        forward: Forward,
        *,
        max_batch: int,
        max_wait_s: float,
        timeout_s: float,
    ) -> tuple[Outputs, int]:
        """Run ``inputs`` in a batch with concurrent requests of the same key.

        Returns:
            This request's outputs, and the size of the batch it ran in (in requests).

        Raises:
            Exception: what ``forward`` raised on this request's inputs alone.
            TimeoutError: no answer within ``timeout_s`` (the leader's forward hangs).
        """
        axes = batch_axis(specs)
        if axes is None or max_batch <= 1:
            return forward(inputs), 1
        pads = paddable_dims(specs)
        key = (id(module_key), self._signature(inputs, specs, axes, pads))
        request = _Request(inputs, int(next(iter(inputs.values())).shape[next(iter(axes.values()))]))
        with self._lock:
            batch = self._open.get(key)
            if batch is None or batch.closed:
                batch = self._open[key] = _Batch([request])
                leader = True
            else:
                batch.requests.append(request)
                leader = False
            if len(batch.requests) >= max_batch:
                batch.closed = True
                self._open.pop(key, None)
                batch.full.set()
        if leader:
            batch.full.wait(max_wait_s)
            # One batch of a module runs at a time: while the previous one runs, this one stays
            # open and keeps growing (up to max_batch), so batches grow with the load instead
            # of forwards competing for the same cores.
            with self._running_lock(module_key):
                with self._lock:
                    batch.closed = True
                    if self._open.get(key) is batch:
                        del self._open[key]
                self._run_batch(batch.requests, specs, axes, pads, forward)
        elif not request.done.wait(timeout_s):
            raise TimeoutError(f"no answer from the batch's forward within {timeout_s:.0f} s")
        if request.error is not None:
            raise request.error
        return request.outputs or {}, request.batch_size

    @staticmethod
    def _signature(inputs: Inputs, specs: Sequence[InputSpec], axes: dict[str, int], pads: set[str]) -> tuple[Any, ...]:
        """What must be equal for requests to share a batch: dtype and every size that is
        neither the batch axis nor a padded dimension."""
        parts = []
        for spec in specs:
            t = inputs[spec.name]
            sizes = tuple(
                -1 if i == axes[spec.name] or (i < len(spec.shape) and spec.shape[i] in pads) else n
                for i, n in enumerate(t.shape)
            )
            parts.append((spec.name, str(t.dtype), sizes))
        return tuple(parts)

    def _run_batch(
        self, requests: list[_Request], specs: Sequence[InputSpec], axes: dict[str, int], pads: set[str], forward: Forward
    ) -> None:
        try:
            if len(requests) == 1:
                self._answer_alone(requests[0], forward)
                return
            try:
                merged, padded = _concatenate(requests, specs, axes, pads)
                outputs = forward(merged)
                parts = _split(outputs, requests, padded)
            except Exception:  # noqa: BLE001 - find the request that fails: each alone
                for request in requests:
                    self._answer_alone(request, forward)
                return
            for request, part in zip(requests, parts):
                request.outputs, request.batch_size = part, len(requests)
        finally:
            for request in requests:
                request.done.set()

    @staticmethod
    def _answer_alone(request: _Request, forward: Forward) -> None:
        try:
            request.outputs = forward(request.inputs)
        except BaseException as e:  # noqa: BLE001 - handed to the request's own thread
            request.error = e


def _concatenate(
    requests: list[_Request], specs: Sequence[InputSpec], axes: dict[str, int], pads: set[str]
) -> tuple[dict[str, torch.Tensor], dict[int, list[int]]]:
    """The inputs of all requests, padded where needed, joined along each batch axis; and per
    padded axis position, each request's own size there."""
    merged: dict[str, torch.Tensor] = {}
    padded: dict[int, list[int]] = {}
    for spec in specs:
        tensors = [r.inputs[spec.name] for r in requests]
        for i, dim in enumerate(spec.shape):
            if dim in pads:
                sizes = [int(t.shape[i]) for t in tensors]
                longest = max(sizes)
                if min(sizes) != longest:
                    padded[i] = sizes
                    tensors = [_pad(t, i, longest, spec.pad) for t in tensors]  # type: ignore[arg-type]
        merged[spec.name] = torch.cat(tensors, dim=axes[spec.name])
    return merged, padded


def _pad(t: torch.Tensor, axis: int, size: int, value: int | float) -> torch.Tensor:
    if t.shape[axis] == size:
        return t
    shape = list(t.shape)
    shape[axis] = size
    out = t.new_full(shape, value)
    out.narrow(axis, 0, t.shape[axis]).copy_(t)
    return out


def _split(outputs: Outputs, requests: list[_Request], padded: dict[int, list[int]]) -> list[Outputs]:
    """Each request's rows of every output (batch on axis 0), cut back where it was padded.

    Raises:
        ValueError: an output whose first axis is not the batch (the caller then runs each
            request alone).
    """
    total = sum(r.size for r in requests)
    for name, t in outputs.items():
        if t.dim() == 0 or t.shape[0] != total:
            raise ValueError(f"output {name!r} has shape {tuple(t.shape)}, not a batch of {total} first")
    parts: list[Outputs] = []
    start = 0
    for index, request in enumerate(requests):
        part = {}
        for name, t in outputs.items():
            piece = t.narrow(0, start, request.size)
            for axis, sizes in padded.items():
                if axis < piece.dim() and piece.shape[axis] == max(sizes):
                    piece = piece.narrow(axis, 0, sizes[index])
            part[name] = piece.contiguous()
        parts.append(part)
        start += request.size
    return parts

