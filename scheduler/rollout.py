"""Rollouts of a new version, driven by the beat: warm, shadow, promote, or roll back.

``warmstart deploy MODEL --version V`` writes a rollout record to Redis; the beat that holds
the lease advances it a step per tick, so it survives the command exiting and a beat failover
(the record says where it is, and which task it waits for):

1. **warm** — a canary worker stages V beside the serving version: fetched and verified,
   restored, warmed up, golden-checked (:mod:`warmstart.workers.versions`). One where the model
   is HOT with room for V; else one with room for both versions, which makes the serving one
   HOT first (:func:`choose_canary`; the beat does not lower that copy while the rollout runs);
2. **shadow** — the canary replays the model's recent real requests through both versions and
   reports errors, non-finite outputs, latency and (for a compatible change) output agreement;
   :func:`judge_shadow` decides. A version that answers NaN on real inputs its golden inputs
   do not show is caught here, before any live request reaches it;
3. **canary** (when ``canary_share`` > 0) — every worker serving the model stages V (one
   without room sits it out) and answers that share of the model's live requests with it,
   from any client, for ``bake_s``; the workers count what each version did, and the beat
   reads it every tick (:func:`judge_canary`): more errors, any non-finite answer or a slower
   tail (p90 until 100 answers, p99 from then on) rolls back;
4. **promote** — the ``live`` alias moves to V the way ``warmstart alias`` moves it: every
   serving worker stages V, then all switch, with no cold start; one without room reloads
   after the others switched (:mod:`warmstart.scheduler.alias`);
5. **rolled_back** — at any step, when a check fails, a task fails or times out, or
   ``warmstart rollback`` asks: the staged copy is discarded and the old version never stopped
   serving. After promotion, ``warmstart rollback`` moves ``live`` back the same way.

Keys (under ``ws:``)::

    rollout:<model>   STRING JSON record (below); kept after it ends, for `warmstart rollout`
    rollouts          SET    models with a rollout in progress

Concurrency: starting a rollout (refused while one is in progress), each step (applied only
if the record is still at the phase and rollout id it was read at) and a hand rollback are
each one Lua script, so two beats, or a beat and a CLI, never both move one rollout.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from celery.result import AsyncResult

from warmstart.infra.errors import RolloutError, SnapshotError, SnapshotNotFoundError, WarmstartError
from warmstart.infra.redis_client import key, redis_errors
from warmstart.infra.settings import Settings
from warmstart.scheduler.alias import AliasMover, error_of, send_version_task
from warmstart.scheduler.scale_signal import leaving_workers
from warmstart.snapshot.catalog import LIVE_ALIAS, get_alias, list_versions, read_manifest
from warmstart.snapshot.names import validate_name
from warmstart.snapshot.stores.base import SnapshotStore
from warmstart.workers.registry import WorkerRegistry

log = logging.getLogger(__name__)

ACTIVE = key("rollouts")
#: How long a rollout waits for its model to be HOT somewhere (to pick a canary).
NO_CANARY_WAIT_S = 30.0
FINISHED = ("done", "rolled_back")
PHASES = ("warm", "shadow", "canary", "promote") + FINISHED  # canary only when its share > 0


def rollout_key(model: str) -> str:
    return key("rollout", model)


# KEYS: record, active set; ARGV: model, new record. The existing record when one is running.
_START = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local phase = cjson.decode(cur)['phase']
  if phase ~= 'done' and phase ~= 'rolled_back' then return cur end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return false
"""

# KEYS: record, active set; ARGV: model, rollout id, expected phase, new record, '1' if it ends.
_STEP = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local rec = cjson.decode(cur)
if rec['id'] ~= ARGV[2] or rec['phase'] ~= ARGV[3] then return 0 end
if rec['cancel'] and ARGV[5] ~= '1' then return 0 end
redis.call('SET', KEYS[1], ARGV[4])
if ARGV[5] == '1' then redis.call('SREM', KEYS[2], ARGV[1]) end
return 1
"""

# KEYS: record; ARGV: reason. Marks a running rollout for rollback; the record (or false).
_CANCEL = """
local cur = redis.call('GET', KEYS[1])
if not cur then return false end
local rec = cjson.decode(cur)
if rec['phase'] == 'done' or rec['phase'] == 'rolled_back' then return cur end
rec['cancel'] = ARGV[1]
local out = cjson.encode(rec)
redis.call('SET', KEYS[1], out)
return out
"""


@dataclass(frozen=True)
class ShadowLimits:
    """What a new version must do on the recorded requests to be promoted."""

    latency_bound: float = 1.5  # its p50 and p99 at most this many times the serving version's
    min_slowdown_ms: float = 2.0  # ... and slower by more than this, to count (timer noise)
    compatible: bool = False  # outputs must agree with the serving version's
    atol: float = 1e-4  # ... within this
    max_error_rate_increase: float = 0.01  # canary: its error rate at most the serving one's + this
    min_canary_requests: int = 10  # canary: latency is judged from this many answers on (at p90) ...
    min_tail_requests: int = 100  # ... and at p99 from this many: the p99 of fewer is their slowest one


def judge_shadow(report: dict[str, Any], limits: ShadowLimits) -> list[str]:
    """The reasons not to promote, from a shadow report (empty: promote). Pure."""
    new, old = report["staged"], report["serving"]
    n = report["requests"] * max(1, int(report.get("rounds", 1)))
    reasons = []
    if new["errors"] > old["errors"]:
        reasons.append(f"version {new['version']} raised on {new['errors']} of {n} replayed requests "
                       f"(the serving version on {old['errors']}): {new['first_error']}")  # fmt: skip
    if new["non_finite"] > old["non_finite"]:
        reasons.append(f"version {new['version']} answered non-finite values on {new['non_finite']} of {n} "
                       f"replayed {report['source']}")  # fmt: skip
    for stat in ("p50_ms", "p99_ms"):
        a, b = new.get(stat), old.get(stat)
        if a is not None and b is not None and a > limits.latency_bound * b and a - b > limits.min_slowdown_ms:
            reasons.append(f"version {new['version']} is slower: {stat} {a:.1f} ms against {b:.1f} ms "
                           f"(bound {limits.latency_bound}×)")  # fmt: skip
    diff = report.get("max_abs_diff")
    if limits.compatible and diff is not None and diff > limits.atol:
        reasons.append(f"declared compatible, but outputs differ by up to {diff:.3g} (tolerance {limits.atol:g})")
    return reasons


_LATENCIES = ("p50_ms", "p90_ms", "p99_ms")


def merge_canary(reports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each version's counts over every canary worker (latency: the worst worker's). Pure."""
    merged: dict[str, dict[str, Any]] = {}
    for report in reports:
        for version, c in report.get("versions", {}).items():
            m = merged.setdefault(version, {"requests": 0, "errors": 0, "non_finite": 0, **dict.fromkeys(_LATENCIES)})
            for k in ("requests", "errors", "non_finite"):
                m[k] += int(c.get(k) or 0)
            for k in _LATENCIES:
                if c.get(k) is not None:
                    m[k] = c[k] if m[k] is None else max(m[k], c[k])
    return merged


def judge_canary(merged: dict[str, dict[str, Any]], new: str, old: str | None, limits: ShadowLimits) -> list[str]:
    """The reasons to roll back, from live answers during the canary (empty: go on). Pure."""
    nothing = {"requests": 0, "errors": 0, "non_finite": 0, **dict.fromkeys(_LATENCIES)}
    n, o = merged.get(new, nothing), merged.get(old or "", nothing)
    reasons = []
    if n["non_finite"]:
        reasons.append(f"version {new} answered non-finite values on {n['non_finite']} of {n['requests']} live requests")
    new_rate = n["errors"] / n["requests"] if n["requests"] else 0.0
    old_rate = o["errors"] / o["requests"] if o["requests"] else 0.0
    if n["errors"] and new_rate > old_rate + limits.max_error_rate_increase:
        reasons.append(f"version {new} failed {n['errors']} of {n['requests']} live requests "
                       f"({new_rate:.1%}, the serving version {old_rate:.1%})")  # fmt: skip
    # The tail that the answers so far can show: the p99 of fewer than 100 answers is their
    # slowest one, so one scheduler hiccup on a loaded machine would roll a good version back.
    # Below that the p90 stands in: a version slower on one input in ten still shows there.
    stat = "p99_ms" if n["requests"] >= limits.min_tail_requests else "p90_ms"
    a, b = n.get(stat), o.get(stat)
    if (n["requests"] >= limits.min_canary_requests and a is not None and b is not None
            and a > limits.latency_bound * b and a - b > limits.min_slowdown_ms):  # fmt: skip
        reasons.append(f"version {new} is slower live: {stat[:3]} {a:.1f} ms against {b:.1f} ms over "
                       f"{n['requests']} answers (bound {limits.latency_bound}×)")  # fmt: skip
    return reasons


def _room(info: Any) -> int:
    """The bytes a worker can still take at HOT, from its heartbeat (budgets and usage): the
    HOST and the DEVICE budget both count a HOT model (workers/capacity.py)."""
    budgets = info.get("budgets") if isinstance(info, dict) else None
    usage = info.get("usage") if isinstance(info, dict) else None
    if not isinstance(budgets, dict) or not isinstance(usage, dict):
        return 0
    try:
        return min(int(budgets.get(k, 0)) - int(usage.get(k, 0)) for k in ("host_bytes", "device_bytes"))
    except (TypeError, ValueError):
        return 0


def choose_canary(holders: list[str], workers: dict[str, Any], leaving: set[str], new_bytes: int,
                  serving_bytes: int) -> tuple[str | None, bool]:  # fmt: skip
    """The worker that stages the new version for the warm and shadow steps, and whether it
    must first make the serving version HOT (it holds none). Pure.

    A worker serving the model with room for the new version beside it (the most room
    first); else another live worker with room for both versions; else the serving worker
    with the most room, which may still make room by demoting colder models (or answers a
    ``BudgetError``, which rolls the rollout back). Leaving workers are never chosen; with no
    worker serving the model there is nothing to compare with: ``(None, False)``.

    Args:
        holders: live workers where the model is HOT, in the registry's order.
        workers: live workers' heartbeats (``budgets`` and ``usage`` in bytes).
    """
    if not any(w in workers for w in holders):
        return None, False
    serving = [w for w in holders if w in workers and w not in leaving]  # empty: all leaving
    best = max(serving, key=lambda w: (_room(workers[w]), -serving.index(w)), default=None)
    if best is not None and _room(workers[best]) >= new_bytes:
        return best, False
    others = [w for w in sorted(workers) if w not in holders and w not in leaving]
    spare = max(others, key=lambda w: (_room(workers[w]), -others.index(w)), default=None)
    if spare is not None and _room(workers[spare]) >= new_bytes + serving_bytes:
        return spare, True
    return best, False


class Rollouts:
    """The records in Redis: start, read, step, cancel (each one atomic call)."""

    def __init__(self, client: "redis.Redis[str]") -> None:
        self.client = client
        self._start = client.register_script(_START)
        self._step = client.register_script(_STEP)
        self._cancel = client.register_script(_CANCEL)

    def start(self, model: str, version: str, previous: str | None, limits: ShadowLimits, timeout_s: float,
              canary_share: float = 0.0, bake_s: float = 0.0, new_bytes: int = 0,
              serving_bytes: int = 0) -> dict[str, Any]:  # fmt: skip
        """Record a new rollout at ``warm``.

        Raises:
            RolloutError: a rollout of ``model`` is in progress (nothing changes).
        """
        now = time.time()
        record = {
            "id": uuid.uuid4().hex[:12], "model": model, "version": version, "previous": previous,
            "phase": "warm", "phase_at": now, "started_at": now, "history": [["warm", now]],
            "canary": None, "task": None, "cancel": False, "reason": None, "shadow": None, "switched": None,
            "limits": limits.__dict__, "timeout_s": timeout_s, "canary_share": canary_share, "bake_s": bake_s,
            "canary_tasks": None, "canary_workers": [], "bake_from": None, "canary_report": None,
            "new_bytes": new_bytes, "serving_bytes": serving_bytes, "canary_serves_first": False,
            "canary_skipped": {},
        }  # fmt: skip
        with redis_errors(self.client, f"starting a rollout of {model!r}"):
            running = self._start(keys=[rollout_key(model), ACTIVE], args=[model, json.dumps(record)])
        if running:
            other = json.loads(running)
            raise RolloutError(
                f"a rollout of {model!r} to {other['version']!r} is in progress (phase {other['phase']}); "
                f"wait for it (`warmstart rollout {model}`) or stop it (`warmstart rollback {model}`)"
            )
        return record

    def get(self, model: str) -> dict[str, Any] | None:
        with redis_errors(self.client, f"reading the rollout of {model!r}"):
            raw = self.client.get(rollout_key(model))
        return json.loads(raw) if raw else None

    def active(self) -> list[str]:
        with redis_errors(self.client, "listing rollouts"):
            return sorted(self.client.smembers(ACTIVE))

    def step(self, record: dict[str, Any], phase: str | None = None, **changes: Any) -> bool:
        """Apply ``changes`` (and move to ``phase``) if the record is still where it was read."""
        expected = record["phase"]
        new = {**record, **changes}
        if phase is not None and phase != expected:
            now = time.time()
            new.update(phase=phase, phase_at=now, task=None, history=record["history"] + [[phase, now]])
        ends = "1" if new["phase"] in FINISHED else "0"
        with redis_errors(self.client, f"advancing the rollout of {record['model']!r}"):
            done = self._step(keys=[rollout_key(record["model"]), ACTIVE],
                              args=[record["model"], record["id"], expected, json.dumps(new), ends])  # fmt: skip
        if done:
            record.clear()
            record.update(new)
        return bool(done)

    def cancel(self, model: str, reason: str) -> dict[str, Any] | None:
        """Ask for a running rollout to be rolled back; the record (None when there is none)."""
        with redis_errors(self.client, f"rolling back {model!r}"):
            raw = self._cancel(keys=[rollout_key(model)], args=[reason])
        return json.loads(raw) if raw else None


def start_rollout(store: SnapshotStore, rollouts: Rollouts, model: str, version: str, limits: ShadowLimits,
                  timeout_s: float = 300.0, canary_share: float = 0.1, bake_s: float = 60.0) -> dict[str, Any]:  # fmt: skip
    """Check the request and record the rollout (the beat drives it).

    Raises:
        InvalidNameError: a name is not safe.
        SnapshotNotFoundError: the version is not published (the message lists those that are).
        RolloutError: it is already live, a rollout of the model is in progress, or the canary
            share or bake time is out of range.
    """
    validate_name(model)
    validate_name(version, "version")
    if not 0.0 <= canary_share <= 0.5 or not 0.0 <= bake_s <= 86400:
        raise RolloutError(f"--canary-share must be within [0, 0.5] and --bake-s within [0, 86400] "
                           f"(got {canary_share}, {bake_s}); 0 skips the canary step")  # fmt: skip
    try:
        manifest = read_manifest(store, model, version)
    except SnapshotNotFoundError as e:
        published = ", ".join(list_versions(store, model)) or "none"
        raise SnapshotNotFoundError(f"{e}; {model!r} has versions: {published}; publish {version!r} first") from e
    live = get_alias(store, model, LIVE_ALIAS)
    if live == version:
        raise RolloutError(f"version {version!r} of {model!r} is already live; nothing to roll out")
    # The sizes choose the canary worker (choose_canary); the serving one's is its weights
    # (unknown, 0, when its manifest cannot be read: the canary is then judged on V alone).
    serving_bytes = 0
    if live:
        try:
            serving_bytes = read_manifest(store, model, live).weights.size_bytes
        except SnapshotError as e:
            log.warning("could not read the serving version %s of %s (%s); choosing the canary by %s alone",
                        live, model, e, version)  # fmt: skip
    return rollouts.start(model, version, live, limits, timeout_s, canary_share if bake_s > 0 else 0.0, bake_s,
                          new_bytes=manifest.weights.size_bytes, serving_bytes=serving_bytes)  # fmt: skip


class RolloutDriver:
    """Advances every rollout in progress one step per beat tick (leader only)."""

    def __init__(self, settings: Settings, client: "redis.Redis[str]", app: Celery, registry: WorkerRegistry) -> None:
        self.settings = settings
        self.app = app
        self.registry = registry
        self.rollouts = Rollouts(client)
        self._promoting: dict[str, threading.Thread] = {}
        #: (worker, model) copies the planner must not lower: each running rollout's canary
        #: worker, whose serving copy the shadow step compares with (the planner may not have
        #: placed it there: a canary chosen for its room makes it HOT itself). As of the last tick.
        self.pinned: set[tuple[str, str]] = set()

    def tick(self) -> list[dict[str, Any]]:
        """One step for each rollout in progress; their records after it. A rollout whose step
        fails on Redis or a worker is left where it is and tried again next tick."""
        out = []
        for model in self.rollouts.active():
            record = self.rollouts.get(model)
            if record is None:
                continue
            try:
                self._advance(record)
            except WarmstartError as e:
                log.warning("rollout of %s: %s; trying again next tick", model, e)
            out.append(record)
        self.pinned = {(r["canary"], r["model"]) for r in out if r.get("canary") and r.get("phase") not in FINISHED}
        return out

    def _advance(self, record: dict[str, Any]) -> None:
        phase = record["phase"]
        if record.get("cancel") and phase != "promote":
            self._roll_back(record, f"rolled back by hand: {record['cancel']}")
            return
        if phase == "promote":
            self._promote(record)
            return
        if phase == "canary":
            self._canary(record)
            return
        if time.time() - record["phase_at"] > record["timeout_s"]:
            self._roll_back(record, f"the {phase} step got no answer within {record['timeout_s']:.0f} s")
            return
        if record["task"] is None:
            self._send(record)
            return
        result = AsyncResult(record["task"], app=self.app)
        if not result.ready():
            return
        answer = result.get(timeout=1, propagate=False)
        result.forget()
        if not isinstance(answer, dict) or not answer.get("ok"):
            self._roll_back(record, f"{phase} failed on {record['canary']}: {': '.join(error_of(answer))}")
            return
        if phase == "warm":
            self.rollouts.step(record, "shadow", staged_s=answer.get("staged_s"))
        elif phase == "shadow":
            reasons = judge_shadow(answer, ShadowLimits(**record["limits"]))
            if reasons:
                self._roll_back(record, "; ".join(reasons), shadow=answer)
            else:
                following = "canary" if record.get("canary_share") else "promote"
                self.rollouts.step(record, following, shadow=answer)

    def _send(self, record: dict[str, Any]) -> None:
        model, version = record["model"], record["version"]
        canary, serves_first = record["canary"], record.get("canary_serves_first", False)
        if canary is None:
            hot = self.registry.hot_workers(model)
            alive = self.registry.workers()[0]
            canary, serves_first = choose_canary(hot, alive, set().union(*leaving_workers(self.registry.client)),
                                                 int(record.get("new_bytes") or 0), int(record.get("serving_bytes") or 0))  # fmt: skip
            if canary is None:  # between a demotion and the next request, say: wait a little
                if time.time() - record["phase_at"] < min(record["timeout_s"], NO_CANARY_WAIT_S):
                    return
                self._roll_back(record, f"{model!r} was HOT on no worker for {NO_CANARY_WAIT_S:.0f} s: there is nothing "
                                        "to compare the new version with; warm it first (`warmstart infer`, or make it "
                                        "eager), or move the alias by hand (`warmstart alias`)")  # fmt: skip
                return
        if record["phase"] == "warm":
            task = send_version_task(self.app, canary, model, version, "stage", serving=serves_first)
        else:
            task = send_version_task(self.app, canary, model, version, "shadow")
        self.rollouts.step(record, None, canary=canary, canary_serves_first=serves_first, task=task.id)

    def _canary(self, record: dict[str, Any]) -> None:
        """Start the canary on every serving worker, then read and judge it each tick until
        the bake time is over."""
        model, version = record["model"], record["version"]
        if record["bake_from"] is None and time.time() - record["phase_at"] > record["timeout_s"]:
            self._roll_back(record, f"the canary did not start within {record['timeout_s']:.0f} s")
            return
        tasks = record.get("canary_tasks")
        if tasks is None:
            workers = sorted(set(self.registry.hot_workers(model)) | {record["canary"]})
            action = "canary" if record["bake_from"] is None else "canary_report"
            extra = {"share": record["canary_share"]} if action == "canary" else {}
            sent = {w: send_version_task(self.app, w, model, version, action, **extra).id for w in workers}
            workers_now = sorted(set(record["canary_workers"]) | set(workers))
            self.rollouts.step(record, None, canary_tasks=sent, canary_workers=workers_now)
            return
        results = {w: AsyncResult(t, app=self.app) for w, t in tasks.items()}
        if not all(r.ready() for r in results.values()):
            if record["bake_from"] is not None and time.time() - record["bake_from"] > record["bake_s"] + record["timeout_s"]:
                self._roll_back(record, "the canary workers stopped answering")
            return
        answers = {w: r.get(timeout=1, propagate=False) for w, r in results.items()}
        for r in results.values():
            r.forget()
        failed = {w: a for w, a in answers.items() if not isinstance(a, dict) or not a.get("ok")}
        skipped: dict[str, str] = {}
        if record["bake_from"] is None:
            # A serving worker without room for the new version beside the old sits the canary
            # out (it answers with the old one); the canary worker itself must take part.
            skipped = {w: ": ".join(error_of(a)) for w, a in failed.items()
                       if w != record["canary"] and error_of(a)[0] == "BudgetError"}  # fmt: skip
            failed = {w: a for w, a in failed.items() if w not in skipped}
        if failed:
            why = "; ".join(f"{w}: {error_of(a)[1]}" for w, a in failed.items())
            self._roll_back(record, f"canary failed ({why})")
            return
        if record["bake_from"] is None:  # every serving worker with room answers its share from now on
            self.rollouts.step(record, None, canary_tasks=None, bake_from=time.time(), canary_skipped=skipped)
            return
        merged = merge_canary(list(answers.values()))
        reasons = judge_canary(merged, version, record["previous"], ShadowLimits(**record["limits"]))
        new, old = merged.get(version, {}).get("requests", 0), merged.get(record["previous"] or "", {}).get("requests", 0)
        report = {"versions": merged, "observed_share": new / (new + old) if new + old else None}
        if reasons:
            self._roll_back(record, "; ".join(reasons), canary_report=report)
        elif time.time() - record["bake_from"] >= record["bake_s"]:
            self.rollouts.step(record, "promote", canary_report=report)
        else:
            self.rollouts.step(record, None, canary_tasks=None, canary_report=report)

    def _promote(self, record: dict[str, Any]) -> None:
        model = record["model"]
        running = self._promoting.get(model)
        if running is not None and running.is_alive():
            return
        # On its own thread: staging on every serving worker takes seconds, and the tick (and
        # the lease it renews) must go on meanwhile. A beat that takes over mid-way runs it
        # again: staging an already staged version answers at once.
        thread = threading.Thread(target=self._promote_now, args=(dict(record),), name=f"promote-{model}", daemon=True)
        self._promoting[model] = thread
        thread.start()

    def _promote_now(self, record: dict[str, Any]) -> None:
        try:
            moved = AliasMover(self.settings, self.app).move(record["model"], LIVE_ALIAS, record["version"],
                                                             timeout_s=record["timeout_s"])  # fmt: skip
        except WarmstartError as e:
            self._discard_canary(record)
            self.rollouts.step(record, "rolled_back", reason=f"promotion failed: {e}")
            log.warning("rollout of %s to %s rolled back: promotion failed: %s", record["model"], record["version"], e)
            return
        self.rollouts.step(record, "done", switched=moved.switched)
        log.info("rollout of %s: %s is live (was %s)", record["model"], record["version"], record["previous"])

    def _roll_back(self, record: dict[str, Any], reason: str, **changes: Any) -> None:
        self._discard_canary(record)
        if self.rollouts.step(record, "rolled_back", reason=reason, **changes):
            log.warning("rollout of %s to %s rolled back: %s", record["model"], record["version"], reason)

    def _discard_canary(self, record: dict[str, Any]) -> None:
        for worker in sorted(set(record.get("canary_workers") or []) | ({record["canary"]} if record.get("canary") else set())):
            send_version_task(self.app, worker, record["model"], record["version"], "discard")
