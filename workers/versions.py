"""A second version of a model beside the one that serves: staged, checked, then switched to.

Moving a model's ``live`` alias must not make a request wait for a restore. So a worker that
serves the model first **stages** the new version beside the current one: fetched (and
verified) into the cache, restored, warmed up on its golden inputs and the model's recent real
requests, and checked against its golden outputs, while the current version keeps serving.
Only then does the alias move, and each worker **switches**: under the model's slot lock the
slot takes the staged modules in one step, its queue staying open. Requests that leased the
old module finish on it (their answers name the old version); every later one runs on the new.

Budgets (the pool's rule, :mod:`warmstart.workers.pool`): a staged version counts against the
HOST and DEVICE budgets from the moment it is decided until it is switched to or discarded, as a
reservation under the name ``<model>@<version>``; while a model is being staged or is staged,
its serving copy is never chosen to make room. Staged versions are not published to the
registry and not health-checked by the health loop: they take no traffic until switched to.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import torch

from warmstart.infra.errors import InvalidInputError, ModelStateError
from warmstart.infra.tiers import Tier
from warmstart.snapshot.names import validate_name
from warmstart.snapshot.restore import restore_model
from warmstart.workers.slots import Lease, Slot
from warmstart.workers.warmup import run_with_deadline

if TYPE_CHECKING:
    from warmstart.workers.pool import ModelPool

log = logging.getLogger(__name__)


class VersionStager:
    """The staged versions of one pool (at most one per model)."""

    def __init__(self, pool: "ModelPool") -> None:
        self.pool = pool
        # Guards staged, _busy, _dropped, canary_share, counters and _requests (dict, set and counter
        # operations only; the pool's rule 4, workers/pool.py).
        self._lock = threading.Lock()
        self.staged: dict[str, Slot] = {}
        self._busy: set[str] = set()  # models being staged
        self._dropped: set[str] = set()  # models whose stage in progress was discarded meanwhile
        #: model -> the share of its requests the staged version answers (a canary), and
        #: model -> version -> what that version did since the canary began.
        self.canary_share: dict[str, float] = {}
        self.counters: dict[str, dict[str, dict[str, Any]]] = {}
        self._requests: dict[str, int] = {}  # model -> requests seen since its canary began

    def pinned(self) -> set[str]:
        """Models whose serving copy must not be demoted to make room (being staged, staged)."""
        with self._lock:
            return set(self.staged) | set(self._busy)

    def stage(self, model: str, version: str, serving: bool = False) -> dict[str, Any]:
        """Load ``version`` of ``model`` beside the serving one and check it (no traffic).

        ``serving``: make the serving version (the ``live`` alias) HOT here first, when this
        worker does not serve the model yet (a rollout's canary worker chosen for its room:
        the shadow step compares the two versions side by side here).

        Raises:
            UnknownModelError: the version is not published.
            IntegrityError, SnapshotError: its snapshot failed verification or restore.
            BudgetError: it does not fit beside what this worker holds.
            HealthCheckError: it failed its golden check (nothing is kept).
            ModelStateError: the model is being staged here already.
        """
        validate_name(model)
        validate_name(version, "version")
        pool = self.pool
        if serving:
            pool.ensure(model, Tier.HOT)  # HOT already: at once
        with self._lock:
            if model in self._busy:
                raise ModelStateError(f"{model!r} is being staged on {pool.worker} already; retry when it is done")
            held = self.staged.get(model)
            if held is not None and held.version == version:
                return self._report(held, 0.0)
            self._busy.add(model)
            self._dropped.discard(model)
        t0 = time.perf_counter()
        staged = Slot(f"{model}@{version}")  # the reservations' name; never in pool.slots
        try:
            self._drop_staged(model)
            current = pool.slots.get(model)
            staged.manifest = pool._manifest(model, version)
            staged.local = pool.cache.fetch(pool.store, staged.manifest)
            size = staged.size_bytes
            pool._reserve(staged, Tier.HOST, size, wait=True)
            pool._reserve(staged, Tier.DEVICE, size, wait=True)
            pool._restore_host(staged)  # counts what the module really holds, too
            if staged.held_bytes > size:
                pool._reserve(staged, Tier.DEVICE, staged.held_bytes)
            if pool.device.type == "cpu":
                staged.device_module = staged.host_module
            else:
                staged.device_module = restore_model(
                    staged.local.weights_path, staged.manifest, device=str(pool.device), populate=False,
                    allowed_architectures=pool.settings.allowed_architectures,
                )  # fmt: skip
            if current is not None:  # warm up on the model's recent real requests too
                try:
                    staged.samples.extend(list(current.samples))
                except RuntimeError:  # appended to meanwhile: the golden inputs suffice
                    pass
            pool._warm_and_check(staged, max(1, pool.settings.warmup_max_runs))
            staged.tier = Tier.HOT
        except BaseException:
            self._release(staged)
            with self._lock:
                self._busy.discard(model)
            raise
        with self._lock:
            self._busy.discard(model)
            dropped = model in self._dropped
            self._dropped.discard(model)
            if not dropped:
                self.staged[model] = staged
        if dropped:  # its rollout stopped while it staged (a timeout, say): keep nothing
            self._release(staged)
            raise ModelStateError(f"version {version!r} of {model!r} was discarded on {pool.worker} while it was staged")
        seconds = time.perf_counter() - t0
        log.info("staged %s version %s beside %s in %.2f s", model, version,
                 pool.slots[model].version if model in pool.slots else "nothing", seconds)  # fmt: skip
        return self._report(staged, seconds)

    def switch(self, model: str, version: str) -> dict[str, Any]:
        """Serve the staged ``version`` of ``model`` from now on, without closing its queue.

        Raises:
            ModelStateError: that version is not staged here (stage it first).
        """
        validate_name(model)
        validate_name(version, "version")
        pool = self.pool
        self._stop_canary(model)
        with pool._locked(model) as slot:
            with self._lock:
                staged = self.staged.get(model)
                if staged is None or staged.version != version:
                    have = staged.version if staged else "none"
                    raise ModelStateError(
                        f"version {version!r} of {model!r} is not staged on {pool.worker} (staged: {have}); "
                        "stage it first (`warmstart alias` does both)"
                    )
                del self.staged[model]
            previous = slot.version
            slot.manifest, slot.local, slot.golden = staged.manifest, staged.local, staged.golden
            slot.host_module, slot.device_module = staged.host_module, staged.device_module
            slot.held_bytes, slot.warmup = staged.held_bytes, staged.warmup
            slot.health, slot.last_error, slot.failure, slot.failures = "ok", None, None, 0
            slot.samples.clear()  # the old version's inputs may not fit the new one's spec
            slot.tier, slot.hot_at, slot.warmed_by_request = Tier.HOT, time.time(), False
            slot.last_used_s = time.monotonic()
            # The slot's bytes now count as a resident; the staged reservation is let go.
            self._release(staged, drop=False)
            pool._open_gate(slot)  # a no-op when it was serving already
            pool.publish(slot)
            slot.changed.notify_all()
        log.info("%s switched from version %s to %s", model, previous, version)
        return {"worker": pool.worker, "model": model, "version": version, "previous": previous}

    def shadow(self, model: str, version: str, rounds: int = 3) -> dict[str, Any]:
        """Replay the model's recent real requests through the serving and the staged version,
        side by side, and report what each did (no traffic involved; nothing is answered).

        Each recorded request runs ``rounds`` times on each version, alternating, so that both
        see the same machine; its latency is its fastest round. With no recorded request, the
        golden inputs stand in (and the report says so: the golden check has already passed on
        them).

        Returns:
            ``{"requests", "source", "serving": {...}, "staged": {...}, "max_abs_diff"}`` where each
            version's part is ``{"version", "errors", "non_finite", "p50_ms", "p99_ms",
            "first_error"}`` and ``max_abs_diff`` compares outputs of requests both answered.

        Raises:
            ModelStateError: the version is not staged here, or the model is not HOT here.
        """
        pool = self.pool
        with self._lock:
            staged = self.staged.get(model)
        if staged is None or staged.version != version:
            raise ModelStateError(f"version {version!r} of {model!r} is not staged on {pool.worker}; stage it first")
        with pool._locked(model) as slot:
            if slot.tier != Tier.HOT or slot.device_module is None:
                raise ModelStateError(f"{model!r} is not HOT on {pool.worker}: nothing to compare the new version with")
            serving, serving_version = slot.device_module, slot.version
            try:
                recorded = list(slot.samples)
            except RuntimeError:
                recorded = []
            slot.in_flight += 1  # a lease: the serving module is not dropped under the replay
        try:
            source = "recent requests" if recorded else "golden inputs"
            inputs = recorded or [staged.golden[0]]  # type: ignore[index]
            runs: dict[str, dict[str, Any]] = {
                "serving": {"version": serving_version, "module": serving, "latencies": [], "outputs": [], "errors": 0,
                            "non_finite": 0, "first_error": None},
                "staged": {"version": version, "module": staged.device_module, "latencies": [], "outputs": [], "errors": 0,
                           "non_finite": 0, "first_error": None},
            }  # fmt: skip
            for sample in inputs:
                device_inputs = pool._to_device(sample)
                timings: dict[str, list[float]] = {name: [] for name in runs}
                for _ in range(max(1, rounds)):
                    for name, run in runs.items():
                        took = _replay(run, device_inputs, pool.settings.health_timeout_s)
                        if took is not None:
                            timings[name].append(took)
                # Each request's fastest round: a spike of the machine's own (another process,
                # a collection) is not the version's; a version slower on this input is slower
                # in every round.
                for name, run in runs.items():
                    if timings[name]:
                        run["latencies"].append(min(timings[name]))
            diff = _max_abs_diff(runs["serving"]["outputs"], runs["staged"]["outputs"])
            report = {"requests": len(inputs), "rounds": rounds, "source": source, "max_abs_diff": diff}
            for name, run in runs.items():
                report[name] = {
                    "version": run["version"], "errors": run["errors"], "non_finite": run["non_finite"],
                    "p50_ms": _percentile(run["latencies"], 50), "p99_ms": _percentile(run["latencies"], 99),
                    "first_error": run["first_error"],
                }  # fmt: skip
            return report
        finally:
            with slot.lock:
                slot.in_flight -= 1
                slot.changed.notify_all()

    # --- canary: a share of live requests answered by the staged version ------------------

    def start_canary(self, model: str, version: str, share: float) -> dict[str, Any]:
        """Answer ``share`` of ``model``'s requests here (spread evenly) with the staged ``version`` (staged
        first when it is not), counting what each version does from now on.

        Raises:
            InvalidInputError: the share is not within [0, 1].
            the errors of :meth:`stage`.
        """
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0.0 <= share <= 1.0:
            raise InvalidInputError(f"a canary share is a number from 0 to 1, got {share!r}")
        report = self.stage(model, version)
        with self._lock:
            self.canary_share[model] = float(share)
            self.counters[model] = {}
            self._requests[model] = 0
        return {**report, "share": share}

    def pick_canary(self, model: str) -> Lease | None:
        """For one request: a lease on the staged version when it is the canary's turn; None
        to answer with the serving version.

        Turns are spread evenly, not drawn: request n goes to the canary when
        ``floor(n × share)`` steps up, so over any run of requests the canary answers the asked
        share to within one request on each worker (a random draw is off by ±3 points over a
        hundred requests).
        """
        if model not in self.canary_share:  # no canary (almost always): no lock on the request path
            return None
        with self._lock:
            share, staged = self.canary_share.get(model, 0.0), self.staged.get(model)
            if staged is None or share <= 0.0:
                return None
            n = self._requests[model] = self._requests.get(model, 0) + 1
            if math.floor(n * share) == math.floor((n - 1) * share):
                return None
        with staged.lock:
            if staged.device_module is None or staged.manifest is None:
                return None  # discarded meanwhile
            staged.in_flight += 1
            return Lease(staged, staged.device_module, staged.manifest)

    def record(self, model: str, version: str, outcome: str, seconds: float) -> None:
        """Count one answered request while a canary runs (``ok``, ``error``, ``non_finite``)."""
        if model not in self.counters:  # no canary: no lock on the request path
            return
        with self._lock:
            versions = self.counters.get(model)
            if versions is None:
                return
            c = versions.setdefault(version, {"requests": 0, "errors": 0, "non_finite": 0,
                                              "latencies": deque(maxlen=2048)})  # fmt: skip
            c["requests"] += 1
            if outcome == "ok":
                c["latencies"].append(seconds * 1000)
            else:
                c["errors" if outcome == "error" else "non_finite"] += 1

    def canary_report(self, model: str) -> dict[str, Any]:
        """What each version did since the canary began (JSON-ready)."""
        with self._lock:
            share = self.canary_share.get(model)
            versions = {v: {**c, "latencies": list(c["latencies"])} for v, c in self.counters.get(model, {}).items()}
        return {"worker": self.pool.worker, "model": model, "share": share, "versions": {
            v: {"requests": c["requests"], "errors": c["errors"], "non_finite": c["non_finite"],
                "p50_ms": _percentile(c["latencies"], 50), "p90_ms": _percentile(c["latencies"], 90),
                "p99_ms": _percentile(c["latencies"], 99)}
            for v, c in versions.items()}}  # fmt: skip

    def _stop_canary(self, model: str) -> None:
        with self._lock:
            self.canary_share.pop(model, None)
            self.counters.pop(model, None)
            self._requests.pop(model, None)

    def discard(self, model: str) -> bool:
        """Drop a staged version of ``model`` (a rollout that stopped); True when one was. A
        stage in progress keeps nothing when it ends (it answers ``ModelStateError``)."""
        self._stop_canary(model)
        with self._lock:
            if model in self._busy:
                self._dropped.add(model)
        return self._drop_staged(model)

    def _drop_staged(self, model: str) -> bool:
        with self._lock:
            staged = self.staged.pop(model, None)
        if staged is None:
            return False
        self._release(staged)
        log.info("discarded the staged version %s of %s", staged.version, model)
        return True

    def status(self) -> dict[str, str | None]:
        with self._lock:
            return {m: s.version for m, s in self.staged.items()}

    def staging(self) -> list[str]:
        """Models being staged now."""
        with self._lock:
            return sorted(self._busy)

    def _release(self, staged: Slot, drop: bool = True) -> None:
        for level in (Tier.HOST, Tier.DEVICE):
            self.pool._unreserve(staged, level)
        if drop:
            staged.host_module = staged.device_module = None
            gc.collect()

    def _report(self, staged: Slot, seconds: float) -> dict[str, Any]:
        warm = staged.warmup
        return {
            "worker": self.pool.worker,
            "model": staged.model.split("@", 1)[0],
            "version": staged.version,
            "staged_s": round(seconds, 3),
            "settled_latency_ms": warm.settled_latency_s * 1000 if warm else None,
            "warmup_runs": warm.runs if warm else None,
        }


def _replay(run: dict[str, Any], inputs: dict[str, Any], timeout_s: float) -> float | None:
    """One recorded request on one version: whether it failed or went non-finite; its
    milliseconds when it answered."""
    t0 = time.perf_counter()
    try:
        outputs = run_with_deadline(run["module"], inputs, timeout_s)
    except Exception as e:  # the version's own failure on a real request: counted, not raised
        run["errors"] += 1
        run["outputs"].append(None)
        run["first_error"] = run["first_error"] or f"{type(e).__name__}: {e}"[:300]
        return None
    took = (time.perf_counter() - t0) * 1000
    finite = all(bool(torch.isfinite(t).all()) for t in outputs.values() if t.is_floating_point())
    if not finite:
        run["non_finite"] += 1
        run["first_error"] = run["first_error"] or "non-finite outputs"
    run["outputs"].append(outputs if finite else None)
    return took


def _max_abs_diff(a: list[Any], b: list[Any]) -> float | None:
    worst: float | None = None
    for x, y in zip(a, b):
        if x is None or y is None or set(x) != set(y):
            continue
        for name in x:
            if x[name].shape != y[name].shape:
                return float("inf")  # incompatible outputs
            if x[name].numel():
                d = float((x[name].double() - y[name].double()).abs().max())
                worst = d if worst is None else max(worst, d)
    return worst


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 3)
