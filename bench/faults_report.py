"""The fault benchmark's result: counters, phases, memory flatness, targets, and tables.

Pure arithmetic on plain values (the records are :meth:`RequestRecord.to_dict` dicts): no
service, process or clock is touched here, so all of it is unit-tested.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from warmstart.bench.report import format_bytes, format_ratio, format_seconds, format_target, make_table

#: The issue's targets (reported, never asserted): name -> (key in the result, bound, op).
TARGETS = {
    "no_lost": ("lost", 0, "le"),
    "no_wrong": ("wrong", 0, "le"),
    "no_untyped_errors": ("untyped_errors", 0, "le"),
    "redis_memory_flat": ("redis_memory_last_over_middle", 1.10, "le"),
}

#: Keys every result has at its top level.
HEADLINE_KEYS = (
    "requests", "answered_ok", "typed_errors", "untyped_errors", "lost", "wrong", "unsent", "send_failures",
    "duplicates_executed", "max_latency_s", "redis_peak_bytes", "worker_peak_rss_bytes",
)  # fmt: skip

#: Records kept in full in the JSON, per kind of failure.
MAX_LISTED = 100


def _percentile(values: Sequence[float], q: float) -> float | None:
    items = sorted(values)
    if not items:
        return None
    rank = (len(items) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(items) - 1)
    return items[low] + (items[high] - items[low]) * (rank - low)


def outcome_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """How the planned requests ended, with errors broken down by type. Every record has
    exactly one outcome, so the six outcome counters add up to ``requests``."""
    records = list(records)
    outcomes = Counter(r["outcome"] for r in records)
    typed = Counter(r["error_type"] for r in records if r["outcome"] == "typed")
    untyped = Counter(r["error_type"] for r in records if r["outcome"] == "untyped")
    failures = Counter(name for r in records for name in r.get("send_failures") or ())
    return {
        "requests": len(records),
        "sent": sum(1 for r in records if r.get("id") is not None),
        "answered_ok": outcomes["ok"],
        "wrong": outcomes["wrong"],
        "typed_errors": outcomes["typed"],
        "untyped_errors": outcomes["untyped"],
        "lost": outcomes["lost"],
        "unsent": outcomes["unsent"],
        "pending": sum(n for outcome, n in outcomes.items() if outcome not in ("ok", "wrong", "typed", "untyped", "lost", "unsent")),
        "typed_errors_by_type": dict(typed),
        "untyped_errors_by_type": dict(untyped),
        "send_failures": sum(failures.values()),
        "send_failures_by_type": dict(failures),
        "requests_with_send_failures": sum(1 for r in records if r.get("send_failures")),
        # Requests the broker lost (popped for a worker that died before recording them, or
        # queued in a Redis that restarted) and the client sent again: not lost, answered.
        "client_resends": sum(int(r.get("resends") or 0) for r in records),
    }


def latency_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accepted -> answer in hand, over requests that got an answer (ok, wrong, or a typed
    error), and the longest the benchmark's own waiting pool made an answer wait to be read
    (when that is not small, latencies are overstated by up to that much)."""
    records = list(records)
    answered = [r["latency_s"] for r in records if r.get("latency_s") is not None]
    ok = [r["latency_s"] for r in records if r["outcome"] == "ok" and r.get("latency_s") is not None]
    backlog = [r["wait_started_s"] - r["accepted_s"] for r in records
               if r.get("wait_started_s") is not None and r.get("accepted_s") is not None]  # fmt: skip
    return {
        "max_latency_s": max(answered) if answered else None,
        "ok_latency_p50_s": _percentile(ok, 50),
        "ok_latency_p99_s": _percentile(ok, 99),
        "ok_latency_max_s": max(ok) if ok else None,
        "max_wait_backlog_s": max(backlog) if backlog else None,
    }


def memory_flatness(samples: Sequence[Mapping[str, Any]], start_s: float, end_s: float) -> dict[str, Any]:
    """Whether Redis's memory stays flat over ``[start_s, end_s]``: the mean of the last third
    of the samples there against the mean of the middle third (the first third is left out:
    it holds the ramp after a start or a restart), and a least-squares slope.
    None where fewer than 6 samples have a value."""
    window = [(s["t_s"], s["redis_used_bytes"]) for s in samples
              if s.get("redis_used_bytes") is not None and start_s <= s["t_s"] <= end_s]  # fmt: skip
    result: dict[str, Any] = {"window_s": [start_s, end_s], "samples": len(window), "middle_third_mean_bytes": None,
                              "last_third_mean_bytes": None, "last_over_middle": None, "slope_bytes_per_s": None}  # fmt: skip
    if len(window) < 6:
        return result
    n = len(window)
    middle = [v for _, v in window[n // 3 : 2 * n // 3]]
    last = [v for _, v in window[2 * n // 3 :]]
    result["middle_third_mean_bytes"] = statistics.fmean(middle)
    result["last_third_mean_bytes"] = statistics.fmean(last)
    result["last_over_middle"] = result["last_third_mean_bytes"] / result["middle_third_mean_bytes"]
    times = [t for t, _ in window]
    mean_t, mean_v = statistics.fmean(times), statistics.fmean(v for _, v in window)
    var_t = sum((t - mean_t) ** 2 for t in times)
    if var_t > 0:
        result["slope_bytes_per_s"] = sum((t - mean_t) * (v - mean_v) for t, v in window) / var_t
    return result


def memory_peaks(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Redis's and each worker's peak, over every sample."""
    redis = [s["redis_used_bytes"] for s in samples if s.get("redis_used_bytes") is not None]
    workers: dict[str, int] = {}
    for sample in samples:
        for name, rss in (sample.get("workers_rss_bytes") or {}).items():
            if rss is not None:
                workers[name] = max(workers.get(name, 0), rss)
    client = [s["client_rss_bytes"] for s in samples if s.get("client_rss_bytes") is not None]
    return {
        "redis_peak_bytes": max(redis) if redis else None,
        "worker_peak_rss_bytes": max(workers.values()) if workers else None,
        "worker_peak_rss_by_worker": workers,
        "client_peak_rss_bytes": max(client) if client else None,
    }


def injections(timeline: Sequence[Mapping[str, Any]]) -> list[tuple[float, str]]:
    """(time, fault) of each fault's first event: when it was injected."""
    first: dict[str, float] = {}
    for event in timeline:
        first.setdefault(event["fault"], event["t_s"])
    return sorted((t, fault) for fault, t in first.items())


def phase_counts(records: Sequence[Mapping[str, Any]], timeline: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Outcomes of the requests first tried in each phase: before the first fault, then from
    each fault's injection to the next one's."""
    starts = [(float("-inf"), "before the first fault")] + [(t, f"after {fault}") for t, fault in injections(timeline)]
    phases = [{"phase": name, "from_s": None if t == float("-inf") else t, "requests": 0, "ok": 0, "wrong": 0,
               "typed": 0, "untyped": 0, "lost": 0, "unsent": 0, "send_failures": 0} for t, name in starts]  # fmt: skip
    for record in records:
        t = record.get("first_try_s")
        t = record["scheduled_s"] if t is None else t
        index = max(i for i, (start, _) in enumerate(starts) if start <= t)
        phase = phases[index]
        phase["requests"] += 1
        if record["outcome"] in phase:
            phase[record["outcome"]] += 1
        phase["send_failures"] += len(record.get("send_failures") or ())
    return phases


def _nearest_fault(t: float | None, timeline: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    if t is None:
        return None
    before = [(at, fault) for at, fault in injections(timeline) if at <= t]
    if not before:
        return None
    at, fault = before[-1]
    return {"fault": fault, "seconds_after": t - at}


def failed_requests(records: Sequence[Mapping[str, Any]], timeline: Sequence[Mapping[str, Any]],
                    executed: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Requests that did not end well, each with the fault it followed and what the monitor
    saw of its executions (a lost request with a stored answer was executed, and its answer
    never reached the client)."""
    listed: dict[str, list[dict[str, Any]]] = {"lost": [], "wrong": [], "untyped": [], "typed": [], "unsent": []}
    for record in records:
        kind = record["outcome"]
        if kind not in listed or len(listed[kind]) >= MAX_LISTED:
            continue
        entry = {k: record.get(k) for k in ("index", "id", "model", "error_type", "error_message", "first_try_s",
                                            "accepted_s", "answered_s", "worker", "send_failures")}  # fmt: skip
        entry["after_fault"] = _nearest_fault(record.get("accepted_s") or record.get("first_try_s"), timeline)
        entry["stored_answers_seen"] = len(executed.get(record.get("id") or "", ()))
        entry["unacked_when"] = [f"{e['fault']}: {e['event']}" for e in timeline
                                 if record.get("id") in (e.get("unacked_ids") or e.get("still_unacked") or ())]  # fmt: skip
        listed[kind].append(entry)
    return listed


def _meets(value: float | None, bound: float, op: str) -> bool | None:
    if value is None:
        return None
    return value <= bound if op == "le" else value >= bound


def summarise(
    records: Sequence[Mapping[str, Any]],
    executions: Mapping[str, Any],
    observed: Mapping[str, Sequence[Mapping[str, Any]]],
    samples: Sequence[Mapping[str, Any]],
    timeline: Sequence[Mapping[str, Any]],
    *,
    load_end_s: float,
    conditions: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The benchmark's JSON result from what the run observed.

    Args:
        records: one per planned request (:meth:`RequestRecord.to_dict`).
        executions: :func:`warmstart.bench.faults_load.count_executions` of the sent requests.
        observed: the monitor's stored answers per task id.
        samples: the sampler's one-second samples.
        timeline: the faults' events.
        load_end_s: when the last request was sent (the memory window ends there).
        conditions: rate, models, settings and machine, as the run had them.
        extra: anything else to keep (monitor gaps, process logs, Redis keys...).
    """
    timeline = sorted(timeline, key=lambda e: e["t_s"])  # follow-up threads may record out of order
    counts = outcome_counts(records)
    latency = latency_summary(records)
    peaks = memory_peaks(samples)
    restarts = [e["t_s"] for e in timeline if e["fault"] == "restart-redis" and "started again" in e["event"]]
    flat = memory_flatness(samples, max([0.0, *restarts]), load_end_s)
    answers = {(r["id"], r["worker"], r["started_at"]) for r in records if r["outcome"] in ("ok", "wrong")}
    unseen = sum(1 for task_id, worker, started in answers
                 if not any(o.get("worker") == worker and o.get("started_at") == started for o in observed.get(task_id, ())))  # fmt: skip
    result: dict[str, Any] = {
        "benchmark": "faults",
        **{k: counts[k] for k in ("requests", "answered_ok", "typed_errors", "untyped_errors", "lost", "wrong",
                                  "unsent", "send_failures")},  # fmt: skip
        "duplicates_executed": executions["duplicates_executed"],
        "max_latency_s": latency["max_latency_s"],
        "redis_peak_bytes": peaks["redis_peak_bytes"],
        "worker_peak_rss_bytes": peaks["worker_peak_rss_bytes"],
        "redis_memory_last_over_middle": flat["last_over_middle"],
        "counts": counts,
        "per_model": {model: {k: c[k] for k in ("requests", "answered_ok", "wrong", "typed_errors", "untyped_errors",
                                                "lost", "unsent")}
                      for model, c in ((m, outcome_counts(r for r in records if r["model"] == m))
                                       for m in sorted({r["model"] for r in records}))},  # fmt: skip
        "latency": latency,
        "executions": {**executions, "answers_not_seen_by_monitor": unseen},
        "memory": {**peaks, "redis_flatness": flat},
        "timeline": list(timeline),
        "phases": phase_counts(records, timeline),
        "failed_requests": failed_requests(records, timeline, observed),
        "conditions": dict(conditions),
        "samples": {"memory": list(samples),
                    "ok_latency_s": [r["latency_s"] for r in records if r["outcome"] == "ok" and r.get("latency_s") is not None]},  # fmt: skip
    }
    result["targets"] = {
        name: {"key": key, "value": result[key], "bound": bound, "op": op, "met": _meets(result[key], bound, op)}
        for name, (key, bound, op) in TARGETS.items()
    }
    result.update(extra or {})
    return result


# --- tables ---------------------------------------------------------------------------------

_TARGET_OF = {key: name for name, (key, _, _) in TARGETS.items()}


def _count_row(result: Mapping[str, Any], label: str, key: str) -> list[str]:
    target = result["targets"].get(_TARGET_OF.get(key, ""), None)
    bound = f"= {target['bound']}" if target else ""
    return [label, str(result[key]), bound, format_target(target["met"]) if target else ""]


def _detail(value: Any) -> str:
    """A timeline detail for a table cell: request ids shortened to their first 8 characters."""
    if isinstance(value, list):
        shown = ", ".join(str(v)[:8] for v in value[:4])
        return f"[{shown}{', …' if len(value) > 4 else ''}] ({len(value)})"
    return str(value)


def faults_tables(result: Mapping[str, Any]) -> list[Any]:
    """The rich tables of a result: outcomes and targets, the fault timeline, outcomes by
    phase, errors by type, and memory."""
    conditions, counts = result["conditions"], result["counts"]
    lat, mem = result["latency"], result["memory"]
    flat = mem["redis_flatness"]
    title = (f"Faults: {result['requests']} requests at {conditions['rate_per_s']:g}/s over {conditions['load_s']:.0f} s, "
             f"{conditions['initial_workers']} workers, {conditions['initial_beats']} beats, faults: {', '.join(conditions['faults']) or 'none'}")  # fmt: skip
    flat_target = result["targets"]["redis_memory_flat"]
    rows = [
        ["requests planned", str(result["requests"]), "", ""],
        ["  sent (accepted by submit)", str(counts["sent"]), "", ""],
        ["  not sent within the give-up time", str(result["unsent"]), "", ""],
        ["answered correctly", str(result["answered_ok"]), "", ""],
        ["typed errors", str(result["typed_errors"]), "", ""],
        _count_row(result, "untyped errors", "untyped_errors"),
        _count_row(result, "lost (no answer within the timeout)", "lost"),
        _count_row(result, "wrong answers", "wrong"),
        ["send failures (retried)", str(result["send_failures"]), "", ""],
        ["duplicate executions observed", str(result["duplicates_executed"]), "", ""],
        ["latency, ok answers p50 / p99", f"{format_seconds(lat['ok_latency_p50_s'])} / {format_seconds(lat['ok_latency_p99_s'])}", "", ""],
        ["max latency (any answer)", format_seconds(result["max_latency_s"]), "", ""],
        ["Redis used memory, peak", format_bytes(result["redis_peak_bytes"]), "", ""],
        ["Redis memory, last ÷ middle third (steady)", format_ratio(flat["last_over_middle"]),
         f"≤ {flat_target['bound']}", format_target(flat_target["met"])],
        ["worker RSS, peak", format_bytes(result["worker_peak_rss_bytes"]), "", ""],
    ]  # fmt: skip
    env = conditions.get("environment", {})
    caption = (f"{env.get('usable_cpus', '?')} CPUs, torch {env.get('torch', '?')}, answer timeout "
               f"{conditions['answer_timeout_s']:g} s, visibility timeout {conditions['visibility_timeout_s']:g} s, "
               f"{conditions['clients']} client threads")  # fmt: skip
    tables = [make_table(title, ["measure", "value", "target", "verdict"], rows, caption=caption)]

    events = [[f"{e['t_s']:.2f} s", e["fault"], e["event"],
               ", ".join(f"{k}={_detail(v)}" for k, v in e.items() if k not in ("t_s", "fault", "event"))]
              for e in result["timeline"]]  # fmt: skip
    tables.append(make_table("Fault timeline (seconds after the load started)", ["t", "fault", "event", "details"], events))

    phase_rows = [[p["phase"], "" if p["from_s"] is None else f"{p['from_s']:.1f} s", str(p["requests"]), str(p["ok"]),
                   str(p["typed"]), str(p["untyped"]), str(p["lost"]), str(p["wrong"]), str(p["unsent"]),
                   str(p["send_failures"])] for p in result["phases"]]  # fmt: skip
    tables.append(make_table("Outcomes by phase (requests first tried in it)",
                             ["phase", "from", "requests", "ok", "typed", "untyped", "lost", "wrong", "unsent", "send failures"],
                             phase_rows))  # fmt: skip

    error_rows = [["typed", name, str(n)] for name, n in sorted(counts["typed_errors_by_type"].items())]
    error_rows += [["untyped", name, str(n)] for name, n in sorted(counts["untyped_errors_by_type"].items())]
    error_rows += [["send failure", name, str(n)] for name, n in sorted(counts["send_failures_by_type"].items())]
    if error_rows:
        tables.append(make_table("Errors by type", ["kind", "type", "count"], error_rows))

    memory_rows = [
        ["Redis window judged (after the last restart, until the last send)",
         f"{flat['window_s'][0]:.1f}–{flat['window_s'][1]:.1f} s, {flat['samples']} samples"],
        ["Redis mean, middle third", format_bytes(flat["middle_third_mean_bytes"])],
        ["Redis mean, last third", format_bytes(flat["last_third_mean_bytes"])],
        ["Redis slope", "—" if flat["slope_bytes_per_s"] is None else f"{flat['slope_bytes_per_s'] / 1024:.1f} KiB/s"],
        *[[f"worker {name} RSS peak", format_bytes(peak)] for name, peak in sorted(mem["worker_peak_rss_by_worker"].items())],
        ["benchmark client RSS peak", format_bytes(mem["client_peak_rss_bytes"])],
    ]  # fmt: skip
    tables.append(make_table("Memory (sampled every second)", ["measure", "value"], memory_rows))
    return tables
