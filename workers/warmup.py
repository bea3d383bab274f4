"""JIT warm-up and the golden health check.

After a restore, the first inferences of a model are slow (allocator growth, kernel selection,
page faults the populate pass missed). :func:`warm_up` runs sample inputs until latency
settles, bounded in count and time, and records the first ("cold") and settled latencies.
:func:`health_check` then requires the golden inputs to reproduce the recorded outputs within
tolerance, finite, within a time limit: only a model that passes becomes HOT.

Deadlines are enforced, not checked after the fact: each warm-up run and the health check's
forward run on a helper thread that the caller waits for at most the deadline. A forward
that hangs is abandoned there (a thread cannot be killed; it ends when the forward does) and
the check fails at the deadline, so the gate closes and no other model's check waits for it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from warmstart.infra.errors import HealthCheckError
from warmstart.snapshot.golden import compare_outputs, normalize_outputs

Inputs = Mapping[str, torch.Tensor]
Outputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WarmupResult:
    runs: int
    cold_latency_s: float
    settled_latency_s: float
    settled: bool
    elapsed_s: float


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    reason: str
    latency_s: float
    max_abs_err: float | None = None


def has_settled(latencies_s: Sequence[float], *, window: int = 3, tolerance: float = 0.15) -> bool:
    """True when the last ``window`` latencies are within ``tolerance`` of their median.

    Pure, so that the rule is tested with plain numbers. The first run never counts (it is the
    cold one): at least ``window + 1`` runs are needed.
    """
    if len(latencies_s) < window + 1:
        return False
    recent = latencies_s[-window:]
    middle = statistics.median(recent)
    return all(abs(x - middle) <= tolerance * middle for x in recent)


def run_model(module: torch.nn.Module, inputs: Inputs) -> Outputs:
    """One inference with no autograd, outputs normalised to named tensors."""
    with torch.inference_mode():
        return normalize_outputs(module(**inputs))


class DeadlineExceeded(Exception):
    """Raised by :func:`run_with_deadline` when the forward has not finished in time."""


def run_with_deadline(module: torch.nn.Module, inputs: Inputs, timeout_s: float) -> Outputs:
    """:func:`run_model` on a helper thread, waited for at most ``timeout_s``.

    Raises:
        DeadlineExceeded: the forward did not finish in time (it goes on, abandoned).
        Exception: whatever the forward raised.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["outputs"] = run_model(module, inputs)
        except BaseException as e:  # handed to the waiting thread, which decides
            outcome["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name="warmstart-forward", daemon=True).start()
    if not done.wait(timeout_s):
        raise DeadlineExceeded(f"the forward did not finish within {timeout_s} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["outputs"]


def warm_up(
    module: torch.nn.Module,
    samples: Sequence[Inputs],
    *,
    max_runs: int,
    max_s: float,
    run_timeout_s: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> WarmupResult:
    """Run samples (cycling through them) until latency settles, or the bounds are hit.

    Args:
        module: the restored model, in eval mode.
        samples: inputs to run: recorded requests when there are some, else golden inputs.
        max_runs: the most inferences to run.
        max_s: the most seconds to spend (checked between runs).
        run_timeout_s: the deadline of each run (None: none, the run is on this thread).

    Returns:
        What happened, including cold (first) and settled (median of the last runs) latency.

    Raises:
        HealthCheckError: a run did not finish within ``run_timeout_s``.
        Exception: whatever the model's forward raised (the pool types it).
    """
    latencies: list[float] = []
    start = clock()
    while len(latencies) < max_runs:
        t0 = clock()
        sample = samples[len(latencies) % len(samples)]
        if run_timeout_s is None:
            run_model(module, sample)
        else:
            try:
                run_with_deadline(module, sample, run_timeout_s)
            except DeadlineExceeded as e:
                raise HealthCheckError(f"a warm-up run hung: {e} (WARMSTART_HEALTH_TIMEOUT_S)") from e
        latencies.append(clock() - t0)
        if has_settled(latencies) or clock() - start >= max_s:
            break
    settled_s = statistics.median(latencies[-3:])
    return WarmupResult(
        runs=len(latencies),
        cold_latency_s=latencies[0],
        settled_latency_s=settled_s,
        settled=has_settled(latencies),
        elapsed_s=clock() - start,
    )


def health_check(
    module: torch.nn.Module,
    golden_inputs: Inputs,
    golden_outputs: Mapping[str, torch.Tensor],
    *,
    rtol: float,
    atol: float,
    timeout_s: float,
) -> HealthResult:
    """Run the golden inputs and compare with the recorded outputs.

    A failure to run, a mismatch, non-finite values or a run slower than ``timeout_s`` all
    fail the check; the reason says which.
    """
    t0 = time.perf_counter()
    try:
        actual = run_with_deadline(module, golden_inputs, timeout_s)
    except DeadlineExceeded:
        return HealthResult(False, f"golden inference did not finish within the {timeout_s}s limit "
                            "(WARMSTART_HEALTH_TIMEOUT_S)", time.perf_counter() - t0)  # fmt: skip
    except Exception as e:  # a model that raises is unhealthy, whatever it raised
        return HealthResult(False, f"golden inference raised {type(e).__name__}: {e}", time.perf_counter() - t0)
    latency = time.perf_counter() - t0
    check = compare_outputs(actual, golden_outputs, rtol=rtol, atol=atol)
    if not check.ok:
        return HealthResult(False, check.reason, latency, check.max_abs_err)
    if latency > timeout_s:
        return HealthResult(False, f"golden inference took {latency:.3f}s, over the {timeout_s}s limit", latency, check.max_abs_err)
    return HealthResult(True, "ok", latency, check.max_abs_err)
