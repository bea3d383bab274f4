"""Rollouts of a new version, driven by the beat: warm, shadow, promote, or roll back.

``warmstart deploy MODEL --version V`` writes a rollout record to Redis; the beat that holds
the lease advances it a step per tick, so it survives the command exiting and a beat failover
(the record says where it is, and which task it waits for):

1. **warm** — a canary worker (one where the model is HOT) stages V beside the serving version:
   fetched and verified, restored, warmed up, golden-checked (:mod:`warmstart.workers.versions`);
2. **shadow** — the canary replays the model's recent real requests through both versions and
   reports errors, non-finite outputs, latency and (for a compatible change) output agreement;
   :func:`judge_shadow` decides. A version that answers NaN on real inputs its golden inputs
   do not show is caught here, before any live request reaches it;
3. **promote** — the ``live`` alias moves to V the way ``warmstart alias`` moves it: every
   serving worker stages V, then all switch, with no cold start (:mod:`warmstart.scheduler.alias`);
4. **rolled_back** — at any step, when a check fails, a task fails or times out, or
   ``warmstart rollback`` asks: the staged copy is discarded and the old version never stopped
   serving. After promotion, ``warmstart rollback`` moves ``live`` back the same way.

Not built yet: the live canary share of traffic between shadow and promote (see docs/rollouts.md).

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

from warmstart.infra.celery_app import TASK_VERSION, control_queue
from warmstart.infra.errors import RolloutError, SnapshotNotFoundError, WarmstartError
from warmstart.infra.redis_client import key, redis_errors
from warmstart.infra.settings import Settings
from warmstart.snapshot.catalog import LIVE_ALIAS, get_alias, list_versions, read_manifest
from warmstart.snapshot.names import validate_name
from warmstart.snapshot.stores.base import SnapshotStore
from warmstart.workers.registry import WorkerRegistry

log = logging.getLogger(__name__)

ACTIVE = key("rollouts")
#: How long a rollout waits for its model to be HOT somewhere (to pick a canary).
NO_CANARY_WAIT_S = 30.0
FINISHED = ("done", "rolled_back")
PHASES = ("warm", "shadow", "promote") + FINISHED


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


class Rollouts:
    """The records in Redis: start, read, step, cancel (each one atomic call)."""

    def __init__(self, client: "redis.Redis[str]") -> None:
        self.client = client
        self._start = client.register_script(_START)
        self._step = client.register_script(_STEP)
        self._cancel = client.register_script(_CANCEL)

    def start(self, model: str, version: str, previous: str | None, limits: ShadowLimits, timeout_s: float) -> dict[str, Any]:
        """Record a new rollout at ``warm``.

        Raises:
            RolloutError: a rollout of ``model`` is in progress (nothing changes).
        """
        now = time.time()
        record = {
            "id": uuid.uuid4().hex[:12], "model": model, "version": version, "previous": previous,
            "phase": "warm", "phase_at": now, "started_at": now, "history": [["warm", now]],
            "canary": None, "task": None, "cancel": False, "reason": None, "shadow": None, "switched": None,
            "limits": limits.__dict__, "timeout_s": timeout_s,
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


def start_rollout(store: SnapshotStore, rollouts: Rollouts, model: str, version: str,
                  limits: ShadowLimits, timeout_s: float = 300.0) -> dict[str, Any]:  # fmt: skip
    """Check the request and record the rollout (the beat drives it).

    Raises:
        InvalidNameError: a name is not safe.
        SnapshotNotFoundError: the version is not published (the message lists those that are).
        RolloutError: it is already live, or a rollout of the model is in progress.
    """
    validate_name(model)
    validate_name(version, "version")
    try:
        read_manifest(store, model, version)
    except SnapshotNotFoundError as e:
        published = ", ".join(list_versions(store, model)) or "none"
        raise SnapshotNotFoundError(f"{e}; {model!r} has versions: {published}; publish {version!r} first") from e
    live = get_alias(store, model, LIVE_ALIAS)
    if live == version:
        raise RolloutError(f"version {version!r} of {model!r} is already live; nothing to roll out")
    return rollouts.start(model, version, live, limits, timeout_s)


class RolloutDriver:
    """Advances every rollout in progress one step per beat tick (leader only)."""

    def __init__(self, settings: Settings, client: "redis.Redis[str]", app: Celery, registry: WorkerRegistry) -> None:
        self.settings = settings
        self.app = app
        self.registry = registry
        self.rollouts = Rollouts(client)
        self._promoting: dict[str, threading.Thread] = {}

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
        return out

    def _advance(self, record: dict[str, Any]) -> None:
        phase = record["phase"]
        if record.get("cancel") and phase != "promote":
            self._roll_back(record, f"rolled back by hand: {record['cancel']}")
            return
        if phase == "promote":
            self._promote(record)
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
            error = (answer or {}).get("error", {}) if isinstance(answer, dict) else {"message": repr(answer)}
            self._roll_back(record, f"{phase} failed on {record['canary']}: {error.get('type', 'error')}: {error.get('message')}")
            return
        if phase == "warm":
            self.rollouts.step(record, "shadow", staged_s=answer.get("staged_s"))
        elif phase == "shadow":
            reasons = judge_shadow(answer, ShadowLimits(**record["limits"]))
            if reasons:
                self._roll_back(record, "; ".join(reasons), shadow=answer)
            else:
                self.rollouts.step(record, "promote", shadow=answer)

    def _send(self, record: dict[str, Any]) -> None:
        model, version = record["model"], record["version"]
        canary = record["canary"]
        if canary is None:
            hot = self.registry.hot_workers(model)
            if not hot:  # between a demotion and the next request, say: wait a little
                if time.time() - record["phase_at"] < min(record["timeout_s"], NO_CANARY_WAIT_S):
                    return
                self._roll_back(record, f"{model!r} was HOT on no worker for {NO_CANARY_WAIT_S:.0f} s: there is nothing "
                                        "to compare the new version with; warm it first (`warmstart infer`, or make it "
                                        "eager), or move the alias by hand (`warmstart alias`)")  # fmt: skip
                return
            canary = hot[0]
        action = "stage" if record["phase"] == "warm" else "shadow"
        task = self.app.send_task(TASK_VERSION, kwargs={"model": model, "version": version, "action": action},
                                  queue=control_queue(canary))  # fmt: skip
        self.rollouts.step(record, None, canary=canary, task=task.id)

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
        from warmstart.scheduler.alias import AliasMover

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
        if record.get("canary"):
            self.app.send_task(TASK_VERSION, kwargs={"model": record["model"], "version": record["version"],
                                                     "action": "discard"}, queue=control_queue(record["canary"]))  # fmt: skip
