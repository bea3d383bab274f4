"""The raw client's lazy cold start for ``warmstart bench serve`` (``raw_lazy_cold_s``).

A plain Celery client, in its own process, with no warmstart import (it is checked): it sends
``warmstart.infer`` to ``infer.<model>`` with ``send_task`` as docs/workers.md describes, to a
model no worker holds HOT, and waits for the answer. It sends no pre-warm and records nothing:
the beat sees the request on the queue (keyspace notification), records it and sends the
lazy pre-warm (:mod:`warmstart.scheduler.queue_watch`). The client process connects first
(broker and result backend) and is told to go once ready, so that its start-up is not timed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from warmstart.infra.errors import WarmstartError

#: Reads the request's kwargs (JSON) and a timeout from stdin, connects, prints "ready",
#: waits for a line, then times send -> answer and prints the result as JSON.
RAW_CLIENT = r"""
import json, sys, time
from celery import Celery
url = sys.argv[1]
spec = json.loads(sys.stdin.readline())
app = Celery(broker=url, backend=url)
app.connection_for_write().ensure_connection(max_retries=3)
app.backend.client.ping()
print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
result = app.send_task("warmstart.infer", kwargs=spec["kwargs"], queue="infer." + spec["kwargs"]["model"])
answer = result.get(timeout=spec["timeout_s"], interval=0.005)
elapsed = time.perf_counter() - t0
result.forget()
imported = sorted(m for m in sys.modules if m == "warmstart" or m.startswith("warmstart."))
print(json.dumps({"elapsed_s": elapsed, "answer": answer, "imported": imported}), flush=True)
"""


def measure_raw_lazy_cold(redis_url: str, kwargs: dict[str, Any], timeout_s: float) -> tuple[float, dict[str, Any]]:
    """One raw lazy cold start: ``(seconds from send to answer, the answer)``.

    Raises:
        WarmstartError: the client failed, imported warmstart, or was answered with an error.
    """
    proc = subprocess.Popen([sys.executable, "-c", RAW_CLIENT, redis_url], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if proc.stdin is None or proc.stdout is None:
            raise WarmstartError("could not talk to the raw Celery client's process")
        proc.stdin.write(json.dumps({"kwargs": kwargs, "timeout_s": timeout_s}) + "\n")
        proc.stdin.flush()
        if proc.stdout.readline().strip() != "ready":
            raise WarmstartError(f"the raw Celery client did not start: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=timeout_s + 30)
    except subprocess.TimeoutExpired as e:
        raise WarmstartError(f"the raw Celery client got no answer within {timeout_s}s") from e
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise WarmstartError(f"the raw Celery client failed:\n{err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    if result["imported"]:
        raise WarmstartError(f"the raw client imported {result['imported']}: it must know Celery only")
    answer = result["answer"]
    if not (isinstance(answer, dict) and answer.get("ok")):
        raise WarmstartError(f"the raw Celery client was answered {answer!r}")
    return float(result["elapsed_s"]), answer
