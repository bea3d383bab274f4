"""How ``warmstart bench serve`` times each path: a warm request, a bare echo, a lazy cold
start, a naive cold start in a fresh process; and the worker-side moves between them
(demote, pre-warm, waiting for the worker's queues to change).

Each function performs one measurement or one move against a running worker and returns
plain numbers; :mod:`warmstart.bench.serve` sets up, schedules and summarises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from warmstart.bench.report import median
from warmstart.infra.errors import WarmstartError

#: The served model's name (in the store, the cache and the queue ``infer.<name>``).
MODEL = "bench-serve-encoder"
#: The one worker's name (its control queue is ``warmstart.worker.<name>``).
WORKER = "bench-serve-worker"

Progress = Callable[[str], None]


def send_and_wait(app: Any, task: str, kwargs: Mapping[str, Any], queue: str, timeout_s: float) -> Any:
    """Send one task and wait for its result, polling as ``PendingInference.raw`` does.

    Raises:
        WarmstartError: no result within ``timeout_s`` (is the worker alive?).
    """
    from celery.exceptions import TimeoutError as CeleryTimeoutError

    result = app.send_task(task, kwargs=dict(kwargs), queue=queue)
    try:
        return result.get(timeout=timeout_s, propagate=True, interval=0.005)
    except CeleryTimeoutError as e:
        raise WarmstartError(f"no answer to {task} on {queue} within {timeout_s}s: see the worker's log") from e


# --- the warm path --------------------------------------------------------------------------


def time_inference(client: Any, inputs: Mapping[str, Any], timeout_s: float) -> tuple[dict[str, float], dict[str, Any]]:
    """One request through the client, timed from ``submit`` to the answer in hand.

    Returns:
        ``(sample, answer)``. The sample's seconds: ``e2e_s``; ``forward_s`` (the worker's
        ``forward_ms``); ``overhead_s`` (= e2e - forward); and its parts ``submit_s`` (the
        client until the message is sent), ``dispatch_s`` (sent -> the worker starts the
        forward: broker, pickup, input decoding) and ``return_s`` (forward done -> answer in
        hand: output encoding, result store, pub/sub, client). The parts are read from two
        processes' wall clocks on one host.
    """
    wall0, t0 = time.time(), time.perf_counter()
    pending = client.submit(MODEL, inputs, timeout_s=timeout_s)
    t_sent = time.perf_counter()
    answer = pending.raw(timeout_s)
    t1 = time.perf_counter()
    forward_s = float(answer["forward_ms"]) / 1000
    started = float(answer["started_at"])
    sample = {
        "e2e_s": t1 - t0,
        "forward_s": forward_s,
        "overhead_s": t1 - t0 - forward_s,
        "submit_s": t_sent - t0,
        "dispatch_s": started - (wall0 + t_sent - t0),
        "return_s": (wall0 + t1 - t0) - started - forward_s,
    }
    return sample, answer


def time_echo(app: Any, queue: str, payload: object, timeout_s: float) -> float:
    """One bare ``warmstart.echo`` round trip on ``queue``, waited for as the client waits.

    Raises:
        WarmstartError: the echo came back with something else than its payload.
    """
    from warmstart.infra.celery_app import TASK_ECHO

    t0 = time.perf_counter()
    answer = send_and_wait(app, TASK_ECHO, {"payload": payload}, queue, timeout_s)
    elapsed = time.perf_counter() - t0
    if not (isinstance(answer, dict) and answer.get("ok") and answer.get("payload") == payload):
        raise WarmstartError(f"the echo task answered {str(answer)[:200]!r}, not its payload")
    return elapsed


def measure_warm(
    client: Any, inputs: Mapping[str, Any], requests: int, timeout_s: float, say: Progress
) -> tuple[list[dict[str, float]], list[float]]:
    """Alternate ``requests`` inferences with as many echoes on the model's queue.

    The order flips every pair (inference first, then echo first), so that neither kind
    always follows the other. One request is in flight at a time.

    Returns:
        ``(inference samples as from time_inference, echo round trips in seconds)``.
    """
    from warmstart.infra.celery_app import infer_queue

    payload = client.encode_inputs(inputs)
    queue = infer_queue(MODEL)
    samples: list[dict[str, float]] = []
    echoes: list[float] = []
    step = max(1, requests // 5)
    for i in range(requests):
        if i % 2 == 0:
            samples.append(time_inference(client, inputs, timeout_s)[0])
            echoes.append(time_echo(client.app, queue, payload, timeout_s))
        else:
            echoes.append(time_echo(client.app, queue, payload, timeout_s))
            samples.append(time_inference(client, inputs, timeout_s)[0])
        if (i + 1) % step == 0 or i + 1 == requests:
            overhead_ms = median(s["overhead_s"] for s in samples) * 1e3
            say(f"warm: {i + 1}/{requests} pairs, overhead p50 so far {overhead_ms:.2f} ms, "
                f"echo p50 {median(echoes) * 1e3:.2f} ms")  # fmt: skip
    return samples, echoes


# --- the cold paths -------------------------------------------------------------------------

#: The tier steps of a lazy start from REMOTE; one from DISK skips the first.
_UP_STEPS = ("REMOTE>DISK", "DISK>HOST", "HOST>DEVICE", "DEVICE>HOT")


def measure_lazy_cold(
    client: Any, registry: Any, inputs: Mapping[str, Any], from_tier: str, timeout_s: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One lazy cold start: submit to a model the worker does not hold HOT, until the answer.

    The breakdown comes from what the worker published: its timed tier steps
    (``ws:cost:<model>``), when the model became HOT and its gate opened, and when the
    request's forward started.

    Returns:
        ``(sample, answer)``: ``lazy_cold_s`` and its parts in seconds, ``warmup_runs``.

    Raises:
        WarmstartError: a worker holds the model HOT already (this would not be a cold start).
    """
    if registry.hot_workers(MODEL):
        raise WarmstartError(f"{MODEL} is HOT on {registry.hot_workers(MODEL)} before a cold start: demote it first")
    wall0, t0 = time.time(), time.perf_counter()
    answer = client.submit(MODEL, inputs, timeout_s=timeout_s).raw(timeout_s)
    elapsed = time.perf_counter() - t0
    wall1 = wall0 + elapsed
    state = registry.models_of(WORKER).get(MODEL, {})
    costs = registry.transition_costs(MODEL)
    steps = _UP_STEPS if from_tier == "REMOTE" else _UP_STEPS[1:]
    step_s = {step: costs.get(step) for step in steps}
    forward_s = float(answer["forward_ms"]) / 1000
    started = float(answer["started_at"])
    hot_at, gate_at = state.get("hot_at"), state.get("gate_opened_at")
    sample: dict[str, Any] = {
        "lazy_cold_s": elapsed,
        "from_tier": from_tier,
        "steps_s": step_s,
        # enqueue -> the pre-warm starts its first step (client, broker, pickup)
        "to_first_step_s": None if hot_at is None else hot_at - wall0 - sum(v or 0.0 for v in step_s.values()),
        "restore_s": step_s.get("DISK>HOST"),
        "warmup_and_check_s": step_s.get("DEVICE>HOT"),
        "warmup_runs": state.get("warmup_runs"),
        "settled_latency_ms": state.get("settled_latency_ms"),
        # the gate opens (add_consumer broadcast) -> the waiting request's forward starts
        "gate_to_forward_s": None if gate_at is None else started - float(gate_at),
        "forward_s": forward_s,
        "return_s": wall1 - started - forward_s,
    }
    return sample, answer


def demote(app: Any, nodename: str, tier: str, timeout_s: float) -> None:
    """Demote the model on the worker to ``tier`` and wait until it has left its queue.

    The task answers once the tiers are lowered; the ``cancel_consumer`` it sends is handled
    by the worker's event loop afterwards, so the queues are then polled until
    ``infer.<model>`` is gone: the next cold start must find a worker that does not consume it.

    Raises:
        WarmstartError: the worker refused, or still consumes the queue after ``timeout_s``.
    """
    from warmstart.infra.celery_app import TASK_DEMOTE, control_queue

    answer = send_and_wait(app, TASK_DEMOTE, {"model": MODEL, "tier": tier}, control_queue(WORKER), timeout_s)
    if not (isinstance(answer, dict) and answer.get("ok") and answer.get("tier") == tier):
        raise WarmstartError(f"demoting {MODEL} to {tier} answered {answer!r}")
    wait_for_consumption(app, nodename, consuming=False, timeout_s=timeout_s)


def wait_for_consumption(app: Any, nodename: str, *, consuming: bool, timeout_s: float) -> None:
    """Poll the worker's active queues until it does (or does not) consume ``infer.<model>``.

    Raises:
        WarmstartError: not so after ``timeout_s``.
    """
    from warmstart.infra.celery_app import infer_queue

    queue = infer_queue(MODEL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replies = app.control.inspect(destination=[nodename], timeout=2.0).active_queues() or {}
        names = {q.get("name") for q in replies.get(nodename, [])}
        if nodename in replies and (queue in names) == consuming:
            return
        time.sleep(0.05)
    raise WarmstartError(
        f"worker {nodename} {'never started' if consuming else 'never stopped'} consuming {queue} "
        f"within {timeout_s}s: see its log"
    )


def measure_naive_cold(spec: Mapping[str, Any], timeout_s: float) -> tuple[float, Any]:
    """The naive cold start in a fresh process (:mod:`warmstart.bench.serve_probe`), timed by this
    process from starting it to reading its answer.

    Args:
        spec: the probe's spec (see :func:`warmstart.bench.serve_probe.answer_once`).

    Returns:
        ``(naive_cold_s, the answer's first output as a tensor)``.

    Raises:
        WarmstartError: the probe failed, printed no answer, or ran past ``timeout_s``.
    """
    import torch

    repo_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "warmstart.bench.serve_probe", json.dumps(spec)],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=repo_root,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = _readline_within(proc, timeout_s)
            elapsed = time.perf_counter() - t0
            proc.wait(timeout_s)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if not line:
            log.seek(0)
            output = log.read().decode(errors="replace")[-4000:]
            raise WarmstartError(f"the naive cold-start probe printed no answer:\n{output}")
    outputs = json.loads(line)["outputs"]
    return elapsed, torch.tensor(outputs[0])


def _readline_within(proc: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    """The first line of ``proc``'s stdout, or b"" if it exits or ``timeout_s`` passes first."""
    import selectors

    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                return proc.stdout.readline()
            if proc.poll() is not None:
                return b""
    raise WarmstartError(f"the naive cold-start probe gave no answer within {timeout_s}s")


def check_output(label: str, actual: Any, reference: Any) -> None:
    """A path that answered wrongly must not post a time.

    Raises:
        WarmstartError: the output differs from the reference computed at setup.
    """
    import torch

    if actual.shape != reference.shape or not torch.allclose(actual.float(), reference.float(), rtol=1e-4, atol=1e-4):
        raise WarmstartError(f"{label} answered an output that differs from the reference: the bench is broken")


def answer_output(answer: Mapping[str, Any]) -> Any:
    from warmstart.workers.wire import decode_outputs

    outputs = decode_outputs(answer["outputs"])
    return outputs[sorted(outputs)[0]]


# --- moving the model on the worker ------------------------------------------------------


def warm_client(client: Any, count: int, timeout_s: float) -> None:
    """Open the client's broker and result connections with echoes on the worker's control
    queue, so that no cold start pays for the harness's own first connection."""
    from warmstart.infra.celery_app import control_queue

    for _ in range(max(3, min(count, 10))):
        time_echo(client.app, control_queue(WORKER), None, timeout_s)


def make_hot(client: Any, nodename: str, timeout_s: float) -> None:
    """Promote the model to HOT on the worker and wait until it consumes ``infer.<model>``."""
    from warmstart.infra.celery_app import TASK_PREWARM, control_queue

    answer = send_and_wait(client.app, TASK_PREWARM, {"model": MODEL, "tier": "HOT"}, control_queue(WORKER), timeout_s)
    if not (isinstance(answer, dict) and answer.get("ok") and answer.get("tier") == "HOT"):
        raise WarmstartError(f"pre-warming {MODEL} to HOT answered {answer!r}")
    wait_for_consumption(client.app, nodename, consuming=True, timeout_s=timeout_s)
