"""Arrivals seen at the broker: every request pushed onto an ``infer.<model>`` queue, whoever
sent it (the Python client, a raw Celery ``send_task``, another language).

The beat runs one :class:`QueueWatcher` beside its ticks. For each request it

1. records the arrival (the traffic the policies learn from: ``ws:traffic:<model>:…``),
   buffered and written in one pipelined round trip every ``FLUSH_S``;
2. when no live worker serves the model, sends one lazy pre-warm that any worker may take
   (the same ``prewarm-claim:<model>`` as the Python client's, so never two);
3. when nobody published the model, answers every request waiting in its queue with
   :class:`~warmstart.infra.errors.UnknownModelError` (the queue is emptied in one Lua call),
   instead of leaving them queued.

How it sees requests:

- **Keyspace notifications** (preferred): kombu pushes each request with one ``LPUSH``; with
  ``notify-keyspace-events`` containing ``K`` and ``l`` (or ``A``), Redis publishes
  ``lpush`` on ``__keyspace@<db>__:infer.<model>``. The embedded Redis enables them
  (:mod:`warmstart.infra.services`); on a managed Redis set ``notify-keyspace-events Kl``.
- **Polling** (fallback, with a warning, when notifications are off or cannot be read): the
  queue lengths of the published models every ``WARMSTART_QUEUE_POLL_S``. It counts a
  queue's growth between two polls, so requests that a HOT worker took before the next poll
  are not counted: a lower bound of the traffic. Cold models (whose requests wait) are seen.

Only the beat holding the lease acts (``is_leader``), so two beats never count twice. A
request delivered again (a dead worker's, restored by kombu) or re-sent by the Python
client's watchdog counts again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from celery import Celery

from warmstart.infra.celery_app import PREWARM_QUEUE, TASK_PREWARM
from warmstart.infra.errors import (
    InvalidNameError,
    SnapshotNotFoundError,
    StoreError,
    UnknownModelError,
    WarmstartError,
)
from warmstart.infra.redis_client import redis_errors
from warmstart.snapshot.catalog import resolve_version
from warmstart.snapshot.names import validate_name
from warmstart.snapshot.stores.base import SnapshotStore
from warmstart.workers.arrivals import ArrivalRecorder
from warmstart.workers.registry import ServedCache, WorkerRegistry

log = logging.getLogger(__name__)

QUEUE_PREFIX = "infer."
#: Arrivals are written to Redis at most this often (the policies work in whole minutes).
FLUSH_S = 0.05
#: How long "a worker serves this model" is trusted before the registry is asked again.
HOT_TTL_S = 1.0
#: How long the store's answer "published" / "not published" is trusted for a name the
#: catalog does not hold.
KNOWN_TTL_S = 5.0
#: In polling mode, look for queues of unpublished models every this many polls.
SCAN_EVERY = 25

# KEYS: the queue. Takes every waiting message at once (atomic: a request pushed meanwhile
# is either taken here or left for the next call, never lost between a read and a delete).
_TAKE_ALL = """
local messages = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return messages
"""


def notifications_on(flags: str) -> bool:
    """True when ``notify-keyspace-events`` ``flags`` publish list commands on keyspace
    channels: ``K`` and ``l`` (``A`` includes ``l``)."""
    return "K" in flags and ("l" in flags or "A" in flags)


def model_of(channel: str) -> str | None:
    """The model of a keyspace channel ``__keyspace@0__:infer.<model>`` (None for others)."""
    _, _, name = channel.partition(":")
    if not name.startswith(QUEUE_PREFIX):
        return None
    model = name[len(QUEUE_PREFIX):]
    return model or None


def task_id_of(message: str) -> str | None:
    """The task id in a kombu message as the Redis transport stores it (None if unreadable)."""
    try:
        payload = json.loads(message)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    headers = payload.get("headers") or {}
    properties = payload.get("properties") or {}
    task_id = headers.get("id") if isinstance(headers, dict) else None
    if task_id is None and isinstance(properties, dict):
        task_id = properties.get("correlation_id")
    return str(task_id) if task_id else None


class QueueWatcher:
    """Watches the ``infer.*`` queues (see the module's description). ``start()`` runs it on
    a daemon thread; :meth:`arrived` and :meth:`poll_once` are the steps, callable directly."""

    def __init__(
        self,
        client: "redis.Redis[str]",
        app: Celery,
        registry: WorkerRegistry,
        recorder: ArrivalRecorder,
        store: SnapshotStore,
        *,
        claim_s: float,
        poll_s: float,
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self.client = client
        self.app = app
        self.registry = registry
        self.recorder = recorder
        self.store = store
        self.claim_s = claim_s
        self.poll_s = poll_s
        self.is_leader = is_leader
        self._take_all = client.register_script(_TAKE_ALL)
        self._catalog: set[str] = set()
        self._catalog_current = False
        self._known: dict[str, tuple[bool, float]] = {}
        self._serving = ServedCache(self.registry, HOT_TTL_S)
        self._lengths: dict[str, int] = {}
        self._pending: list[tuple[str, int, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: ``"notifications"`` or ``"polling"`` once started.
        self.mode: str | None = None

    # --- the catalog (the beat passes it on every tick) ------------------------------------

    def set_catalog(self, models: Iterable[str], current: bool) -> None:
        """The published models as the beat last read them; ``current`` False during a store
        outage (then no request is refused: the store cannot say)."""
        self._catalog = set(models)
        self._catalog_current = current

    def published(self, model: str) -> bool:
        """True unless the store says nobody published ``model`` (a store that cannot be
        asked, or a bad name, count as published and not published respectively)."""
        if model in self._catalog:
            return True
        try:
            validate_name(model)
        except InvalidNameError:
            return False
        now = time.monotonic()
        cached = self._known.get(model)
        if cached and cached[1] > now:
            return cached[0]
        try:
            resolve_version(self.store, model, "live")
            answer = True
        except SnapshotNotFoundError:
            answer = False
        except StoreError as e:
            log.warning("could not ask the store whether %r is published (%s); its requests wait", model, e)
            return True
        self._known[model] = (answer, now + KNOWN_TTL_S)
        return answer

    # --- one request -----------------------------------------------------------------------

    def arrived(self, model: str, count: int = 1, now_s: float | None = None) -> None:
        """``count`` requests were pushed onto ``infer.<model>``: record them; wake a worker
        when none serves the model; answer them when nobody published it."""
        if not self.is_leader():
            return
        if not self.published(model):
            self.refuse(model)
            return
        self._pending.append((model, count, time.time() if now_s is None else now_s))
        if not self._served(model):
            claim = self.registry.claim_prewarm(model, self.claim_s)
            if claim:
                self.app.send_task(TASK_PREWARM, kwargs={"model": model, "tier": "HOT", "lazy": True},
                                   queue=PREWARM_QUEUE, task_id=claim)

    def _served(self, model: str) -> bool:
        return self._serving.served(model)

    def refuse(self, model: str) -> int:
        """Answer every request waiting for ``model`` with UnknownModelError; how many."""
        with redis_errors(self.client, f"emptying the queue of unpublished {model!r}"):
            messages = self._take_all(keys=[QUEUE_PREFIX + model])
        error = UnknownModelError(
            f"model {model!r} is not published: publish it (`warmstart publish`) or send to one "
            "that `warmstart models` lists"
        )
        answered = 0
        for message in messages:
            task_id = task_id_of(message)
            if task_id is None:
                log.warning("dropped an unreadable message from the queue of unpublished %r", model)
                continue
            self.app.backend.store_result(task_id, {"ok": False, "error": error.to_dict()}, "SUCCESS")
            answered += 1
        if answered:
            log.warning("answered %d requests for unpublished model %r with UnknownModelError", answered, model)
        return answered

    def flush(self) -> None:
        """Write the buffered arrivals (one pipelined round trip)."""
        batch, self._pending = self._pending, []
        if batch:
            try:
                self.recorder.record_many(batch)
            except WarmstartError as e:
                log.warning("could not record %d arrivals: %s", len(batch), e)

    def poll_once(self) -> None:
        """The fallback: read the queue lengths of the published models; a queue that grew
        had that many arrivals; a queue with requests and no worker gets a pre-warm."""
        models = sorted(self._catalog)
        if not models:
            return
        with redis_errors(self.client, "reading queue lengths"):
            pipe = self.client.pipeline(transaction=False)
            for model in models:
                pipe.llen(QUEUE_PREFIX + model)
            lengths = pipe.execute()
        for model, length in zip(models, lengths):
            grew = int(length) - self._lengths.get(model, 0)
            self._lengths[model] = int(length)
            if grew > 0:
                self.arrived(model, grew)

    def refuse_unpublished(self) -> int:
        """The fallback's check for queues of models nobody published (a ``SCAN`` of
        ``infer.*``, so it runs every ``SCAN_EVERY`` polls); requests answered."""
        if not self._catalog_current or not self.is_leader():
            return 0
        with redis_errors(self.client, "listing the inference queues"):
            names = list(self.client.scan_iter(match=QUEUE_PREFIX + "*", count=1000))
        answered = 0
        for name in names:
            model = name[len(QUEUE_PREFIX):]
            if model and not self.published(model):
                answered += self.refuse(model)
        return answered

    # --- the thread ------------------------------------------------------------------------

    def detect_mode(self) -> str:
        """``notifications`` when Redis publishes list events on keyspace channels, else
        ``polling`` (with a warning that says how to turn them on)."""
        try:
            with redis_errors(self.client, "reading notify-keyspace-events"):
                flags = str(self.client.config_get("notify-keyspace-events").get("notify-keyspace-events", ""))
        except WarmstartError as e:
            flags, why = "", f"CONFIG GET is not allowed here ({e})"
        else:
            why = f"notify-keyspace-events is {flags!r}"
        if notifications_on(flags):
            return "notifications"
        log.warning(
            "Redis keyspace notifications are off (%s): the beat polls queue lengths every %ss "
            "instead, and counts only requests that wait in a queue. Turn them on with "
            "`CONFIG SET notify-keyspace-events Kl` (on a managed Redis: the parameter "
            "notify-keyspace-events = Kl)", why, self.poll_s)
        return "polling"

    def start(self) -> "QueueWatcher":
        self.mode = self.detect_mode()
        target = self._listen if self.mode == "notifications" else self._poll
        self._thread = threading.Thread(target=target, name="warmstart-queue-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def _listen(self) -> None:
        db = int(self.client.connection_pool.connection_kwargs.get("db", 0) or 0)
        pattern = f"__keyspace@{db}__:{QUEUE_PREFIX}*"
        pubsub: Any = None
        last_flush = time.monotonic()
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.psubscribe(pattern)
                message = pubsub.get_message(timeout=FLUSH_S)
                if message and message.get("data") == "lpush":
                    model = model_of(str(message.get("channel", "")))
                    if model:
                        self.arrived(model)
            except (redis.RedisError, OSError, WarmstartError) as e:
                log.warning("watching the queues: %s; subscribing again", e)
                pubsub = None
                self._stop.wait(0.5)
            except Exception:  # never let the thread die silently: the beat depends on it
                log.exception("watching the queues failed; going on")
            if time.monotonic() - last_flush >= FLUSH_S:
                last_flush = time.monotonic()
                self.flush()
        if pubsub is not None:
            try:
                pubsub.close()
            except (redis.RedisError, OSError):
                pass

    def _poll(self) -> None:
        polls = 0
        while not self._stop.is_set():
            try:
                self.poll_once()
                if polls % SCAN_EVERY == 0:
                    self.refuse_unpublished()
                polls += 1
                self.flush()
            except WarmstartError as e:
                log.warning("polling the queues: %s", e)
            except Exception:
                log.exception("polling the queues failed; going on")
            self._stop.wait(self.poll_s)
