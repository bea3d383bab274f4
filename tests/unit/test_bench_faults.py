"""The fault benchmark's pure logic: the request plan, the fault schedule, the counting of
outcomes and executions, memory flatness, targets and tables, and the client threads' send,
retry and classification against an in-memory client. No service or process is started."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from warmstart.bench.faults_cluster import FAULTS, cluster_settings, fault_times, leader_pid
from warmstart.bench.faults_load import (
    LoadDriver,
    PlannedRequest,
    Reference,
    classify_exception,
    compare_outputs,
    count_executions,
    execution_from_message,
    plan_requests,
)
from warmstart.bench.faults_observe import key_group, log_summary, parse_vmrss, unacked_ids
from warmstart.bench.faults_report import (
    HEADLINE_KEYS,
    TARGETS,
    faults_tables,
    memory_flatness,
    memory_peaks,
    outcome_counts,
    phase_counts,
    summarise,
)
from warmstart.infra.errors import InferenceTimeoutError, StateUnavailableError, StoreError
from warmstart.infra.settings import load_settings
from warmstart.workers.wire import encode_tensors

# --- the plan and the schedule ---------------------------------------------------------------


def test_plan_is_evenly_spaced_at_the_rate_and_reproducible() -> None:
    shares = {"a": 0.8, "b": 0.2}
    plan = plan_requests(200, 40.0, shares, inputs_per_model=4, seed=3)

    assert [p.index for p in plan] == list(range(200))
    assert [p.at_s for p in plan] == pytest.approx([i / 40.0 for i in range(200)])
    assert plan == plan_requests(200, 40.0, shares, inputs_per_model=4, seed=3)
    assert plan != plan_requests(200, 40.0, shares, inputs_per_model=4, seed=4)
    assert {p.input_index for p in plan} <= set(range(4))


def test_plan_follows_the_shares_and_skips_models_without_traffic() -> None:
    plan = plan_requests(2000, 10.0, {"popular": 0.9, "rare": 0.1, "off": 0.0}, inputs_per_model=1, seed=0)

    counts = Counter(p.model for p in plan)
    assert counts["popular"] > 5 * counts["rare"] > 0
    assert "off" not in counts


@pytest.mark.parametrize("count, rate, inputs, shares", [
    (0, 1.0, 1, {"a": 1.0}), (1, 0.0, 1, {"a": 1.0}), (1, 1.0, 0, {"a": 1.0}), (1, 1.0, 1, {"a": 0.0}),
])  # fmt: skip
def test_plan_refuses_what_cannot_be_sent(count: int, rate: float, inputs: int, shares: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        plan_requests(count, rate, shares, inputs, seed=0)


def test_faults_are_spread_with_load_before_between_and_after() -> None:
    schedule = fault_times(60.0, FAULTS)

    assert [fault for _, fault in schedule] == list(FAULTS)
    assert [t for t, _ in schedule] == pytest.approx([10.0, 20.0, 30.0, 40.0, 50.0])
    assert fault_times(60.0, ()) == []
    assert [t for t, _ in fault_times(60.0, FAULTS[:2], offset_s=0.0125)] == pytest.approx([20.0125, 40.0125])


@pytest.mark.parametrize("faults", [("kill-worker", "kill-worker"), ("reboot",)])
def test_unknown_or_repeated_faults_are_refused(faults: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        fault_times(60.0, faults)


@pytest.mark.parametrize("value, pid", [
    ("vm-123-abcdef", 123), ("my-host-name-42-0a1b2c", 42), ("", None), (None, None), ("nopid", None),
    ("host-x1-abcdef", None),
])  # fmt: skip
def test_leader_pid_reads_the_lease_value(value: str | None, pid: int | None) -> None:
    assert leader_pid(value) == pid


def test_vmrss_is_read_in_bytes() -> None:
    assert parse_vmrss("Name:\tpython\nVmPeak:\t 9 kB\nVmRSS:\t  2048 kB\nThreads: 3\n") == 2048 * 1024
    assert parse_vmrss("Name:\tzombie\n") is None


def test_cluster_settings_are_valid_settings_with_a_short_visibility_timeout(tmp_path: Path) -> None:
    values = cluster_settings("redis://127.0.0.1:6399/0", "http://127.0.0.1:9", tmp_path,
                              visibility_timeout_s=5.0, answer_timeout_s=60.0)  # fmt: skip

    settings = load_settings(**values)
    assert settings.visibility_timeout_s == 5.0 < settings.inference_timeout_s
    assert settings.traffic_minute_s == 1.0 and settings.plan_interval_s == 1.0
    assert settings.profile == "prod" and settings.eager_models


def test_log_summary_groups_repeats_and_counts_levels() -> None:
    text = "\n".join([
        "[2026-01-01 10:00:01,123: ERROR/MainProcess] heartbeat failed: Error 111 connecting to 127.0.0.1:5000",
        "Traceback (most recent call last):",
        '  File "x.py", line 3, in f',
        "[2026-01-01 10:00:02,456: ERROR/MainProcess] heartbeat failed: Error 111 connecting to 127.0.0.1:5000",
        "[2026-01-01 10:00:03,789: WARNING/MainProcess] consumer: Connection to broker lost",
        "plain line",
    ])  # fmt: skip

    summary = log_summary(text, tail_lines=2)

    assert summary["lines"] == 6 and summary["tracebacks"] == 1
    assert summary["by_level"] == {"ERROR": 2, "WARNING": 1}
    count, message = summary["top_messages"][0]
    assert count == 2 and message.startswith("ERROR/MainProcess] heartbeat failed")
    assert summary["tail"] == text.splitlines()[-2:]


@pytest.mark.parametrize("name, group", [
    ("ws:traffic:short-form:min", "ws:traffic:*"), ("celery-task-meta-1234", "celery-task-meta-*"),
    ("_kombu.binding.infer.kids", "_kombu.binding.*"), ("infer.kids", "infer.*"), ("unacked", "unacked"),
])  # fmt: skip
def test_key_groups(name: str, group: str) -> None:
    assert key_group(name) == group


def test_unacked_entries_name_their_requests() -> None:
    def entry(headers: dict[str, Any], properties: dict[str, Any]) -> str:
        return json.dumps([{"body": "e30=", "headers": headers, "properties": properties}, "infer.a", "infer.a"])

    entries = {"tag1": entry({"id": "t-2"}, {}), "tag2": entry({}, {"correlation_id": "t-1"}), "tag3": "not json"}
    assert unacked_ids(entries) == ["t-1", "t-2"]


# --- answers and executions ------------------------------------------------------------------


def test_exceptions_are_classified_lost_typed_or_untyped() -> None:
    assert classify_exception(InferenceTimeoutError("late")) == ("lost", "InferenceTimeoutError")
    assert classify_exception(StoreError("s3 down")) == ("typed", "StoreError")
    assert classify_exception(ConnectionError("reset")) == ("untyped", "builtins.ConnectionError")


def test_outputs_are_compared_by_name_shape_and_tolerance() -> None:
    want = {"output": torch.tensor([[1.0, 2.0, 3.0]])}

    assert compare_outputs({"output": want["output"] + 1e-7}, want, rtol=1e-5, atol=1e-6)[0]
    match, worst, why = compare_outputs({"output": want["output"] + 0.5}, want, rtol=1e-5, atol=1e-6)
    assert not match and worst == pytest.approx(0.5) and "differs" in why
    assert not compare_outputs({"output": torch.zeros(1, 2)}, want, 1e-5, 1e-6)[0]
    assert not compare_outputs({"scores": want["output"]}, want, 1e-5, 1e-6)[0]


def _stored(task_id: str, **result: Any) -> bytes:
    return json.dumps({"status": "SUCCESS", "result": result, "task_id": task_id}).encode()


def test_stored_answers_are_read_from_result_messages() -> None:
    seen = execution_from_message("celery-task-meta-t1", _stored("t1", ok=True, worker="w1", started_at=5.5))
    assert seen == ("t1", {"status": "SUCCESS", "ok": True, "worker": "w1", "started_at": 5.5, "error_type": None})

    error = {"ok": False, "error": {"type": "StoreError", "message": "down"}}
    task_id, seen_error = execution_from_message("celery-task-meta-t2", json.dumps({"result": error}))  # type: ignore[misc]
    assert task_id == "t2" and seen_error["error_type"] == "StoreError" and not seen_error["ok"]
    assert execution_from_message("celery-task-meta-x", b"not json") is None


def test_executions_count_distinct_runs_not_stores() -> None:
    observed = {
        "once": [{"ok": True, "worker": "w1", "started_at": 1.0}],
        "redelivered": [{"ok": True, "worker": "w1", "started_at": 1.0}, {"ok": True, "worker": "w2", "started_at": 7.0}],
        "stored-twice": [{"ok": True, "worker": "w1", "started_at": 2.0}, {"ok": True, "worker": "w1", "started_at": 2.0}],
        "two-errors": [{"ok": False}, {"ok": False}],
        "not-mine": [{"ok": True, "worker": "w1", "started_at": 3.0}] * 3,
    }

    counted = count_executions(observed, ["once", "redelivered", "stored-twice", "two-errors", "never-run"])

    assert counted["executions_observed"] == 1 + 2 + 1 + 2
    assert counted["duplicates_executed"] == 2
    assert counted["requests_executed_more_than_once"] == 2
    assert counted["stored_twice_same_execution"] == 1
    assert {e["id"] for e in counted["duplicate_examples"]} == {"redelivered", "two-errors"}


# --- the client threads, against an in-memory client -----------------------------------------


class _Pending:
    def __init__(self, task_id: str, answer: dict[str, Any] | None, error: BaseException | None) -> None:
        self.id, self._answer, self._error = task_id, answer, error

    def raw(self, timeout_s: float | None = None) -> dict[str, Any]:
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        return self._answer


class _FakeClient:
    """Answers each model as scripted: ``(send failures before accepting, answer or error)``."""

    def __init__(self, script: dict[str, tuple[int, Any]]) -> None:
        self.script = script
        self.attempts: Counter[str] = Counter()

    def submit(self, model: str, inputs: dict[str, Any], *, timeout_s: float) -> _Pending:
        self.attempts[model] += 1
        failures, outcome = self.script[model]
        if self.attempts[model] <= failures:
            raise StateUnavailableError("Redis is down")
        task_id = f"{model}-{self.attempts[model]}"
        if isinstance(outcome, BaseException):
            return _Pending(task_id, None, outcome)
        return _Pending(task_id, outcome, None)


def _answer(model: str, output: torch.Tensor, worker: str = "w1") -> dict[str, Any]:
    return {"ok": True, "model": model, "worker": worker, "started_at": 1.0, "outputs": encode_tensors({"output": output})}


def test_driver_sends_retries_and_counts_every_outcome() -> None:
    reference_output = torch.tensor([[0.5, -1.0, 2.0]])
    reference = Reference({"x": torch.zeros(1, 2)}, {"output": reference_output}, rtol=1e-5, atol=1e-6)
    script = {
        "ok": (0, _answer("ok", reference_output)),
        "retried": (2, _answer("retried", reference_output)),
        "wrong": (0, _answer("wrong", reference_output + 1)),
        "other-model": (0, _answer("not-this-one", reference_output)),
        "typed": (0, StoreError("cannot reach S3")),
        "untyped": (0, ConnectionError("connection reset")),
        "lost": (0, InferenceTimeoutError("no answer")),
        "unsent": (10**6, None),
    }
    plan = [PlannedRequest(i, 0.0, model, 0) for i, model in enumerate(script)]
    start = time.monotonic()
    driver = LoadDriver(_FakeClient(script), plan, {m: [reference] for m in script}, lambda: time.monotonic() - start,
                        clients=3, waiters=4, answer_timeout_s=5.0, send_give_up_s=0.3)  # fmt: skip

    driver.start()
    assert driver.wait_sent(timeout_s=10)
    assert driver.wait_answered(timeout_s=10) == 0
    driver.stop()

    outcome = {r.model: r for r in driver.records}
    assert {m: outcome[m].outcome for m in script} == {
        "ok": "ok", "retried": "ok", "wrong": "wrong", "other-model": "wrong", "typed": "typed",
        "untyped": "untyped", "lost": "lost", "unsent": "unsent",
    }  # fmt: skip
    assert outcome["retried"].send_failures == ["StateUnavailableError"] * 2 and outcome["retried"].id == "retried-3"
    assert outcome["unsent"].id is None and len(outcome["unsent"].send_failures) >= 2
    assert outcome["typed"].error_type == "StoreError"
    assert outcome["untyped"].error_type == "builtins.ConnectionError"
    assert outcome["lost"].answered_s is None and outcome["lost"].latency_s is None
    assert outcome["wrong"].max_abs_diff == pytest.approx(1.0)
    assert outcome["ok"].latency_s is not None and outcome["ok"].worker == "w1"
    assert driver.send_failure_messages == {"StateUnavailableError": "Redis is down"}
    counts = outcome_counts(r.to_dict() for r in driver.records)
    assert counts["send_failures"] == 2 + len(outcome["unsent"].send_failures)
    assert counts["requests_with_send_failures"] == 2


# --- the result ------------------------------------------------------------------------------


def _record(index: int, outcome: str, *, t: float = 0.0, error_type: str | None = None, failures: int = 0,
            latency: float | None = 0.01) -> dict[str, Any]:  # fmt: skip
    sent = outcome != "unsent"
    answered = outcome in ("ok", "wrong", "typed")
    return {
        "index": index, "id": f"id{index}" if sent else None, "model": "a", "input_index": 0, "outcome": outcome,
        "error_type": error_type, "error_message": None, "scheduled_s": t, "first_try_s": t,
        "accepted_s": t if sent else None, "wait_started_s": t if sent else None,
        "answered_s": t + (latency or 0) if answered else None, "latency_s": latency if answered else None,
        "send_failures": ["StateUnavailableError"] * failures, "worker": "w1" if answered else None,
        "started_at": float(index) if answered else None, "max_abs_diff": 0.0,
    }  # fmt: skip


def _records() -> list[dict[str, Any]]:
    return [
        _record(0, "ok", t=1.0), _record(1, "ok", t=12.0, failures=2, latency=0.5),
        _record(2, "typed", t=12.5, error_type="StoreError"), _record(3, "typed", t=13.0, error_type="StoreError"),
        _record(4, "untyped", t=13.5, error_type="redis.exceptions.ConnectionError"),
        _record(5, "lost", t=20.0), _record(6, "wrong", t=21.0), _record(7, "unsent", t=22.0, failures=4),
    ]  # fmt: skip


def test_outcome_counters_add_up_to_the_requests() -> None:
    counts = outcome_counts(_records())

    outcomes = ("answered_ok", "wrong", "typed_errors", "untyped_errors", "lost", "unsent")
    assert sum(counts[k] for k in outcomes) == counts["requests"] == 8
    assert counts["sent"] == 7 and counts["pending"] == 0
    assert counts["typed_errors_by_type"] == {"StoreError": 2}
    assert counts["untyped_errors_by_type"] == {"redis.exceptions.ConnectionError": 1}
    assert counts["send_failures"] == 6 and counts["requests_with_send_failures"] == 2


def _samples(values: list[int | None], start: float = 0.0) -> list[dict[str, Any]]:
    return [{"t_s": start + i, "redis_used_bytes": v, "workers_rss_bytes": {"w1": 100 + i, "w2": 50},
             "client_rss_bytes": 10} for i, v in enumerate(values)]  # fmt: skip


def test_flat_memory_is_judged_on_the_window_after_the_restart() -> None:
    before_restart = [9_000_000] * 10  # a large Redis before it restarted empty: not judged
    steady = [1_000_000 + (i % 2) * 1000 for i in range(30)]
    samples = _samples(before_restart + steady)

    flat = memory_flatness(samples, start_s=10.0, end_s=39.0)

    assert flat["samples"] == 30
    assert flat["last_over_middle"] == pytest.approx(1.0, abs=0.01)
    assert abs(flat["slope_bytes_per_s"]) < 100


def test_growing_memory_is_not_flat_and_too_few_samples_are_not_judged() -> None:
    growing = memory_flatness(_samples([1_000_000 + 50_000 * i for i in range(30)]), 0.0, 29.0)
    assert growing["last_over_middle"] > 1.1 and growing["slope_bytes_per_s"] == pytest.approx(50_000)

    sparse = memory_flatness(_samples([1, None, None, None, None, None, None, 2]), 0.0, 7.0)
    assert sparse["samples"] == 2 and sparse["last_over_middle"] is None


def test_memory_peaks_cover_every_worker() -> None:
    peaks = memory_peaks(_samples([5, None, 7]))

    assert peaks["redis_peak_bytes"] == 7
    assert peaks["worker_peak_rss_by_worker"] == {"w1": 102, "w2": 50}
    assert peaks["worker_peak_rss_bytes"] == 102


TIMELINE = [
    {"t_s": 10.0, "fault": "restart-redis", "event": "redis-server stopped"},
    {"t_s": 11.0, "fault": "restart-redis", "event": "redis-server started again, empty, on the same port"},
    {"t_s": 20.0, "fault": "s3-outage", "event": "S3 stopped", "unacked_ids": ["id5", "other"]},
]


def test_requests_fall_in_the_phase_they_were_first_tried_in() -> None:
    phases = phase_counts(_records(), TIMELINE)

    assert [p["phase"] for p in phases] == ["before the first fault", "after restart-redis", "after s3-outage"]
    assert [p["requests"] for p in phases] == [1, 4, 3]
    assert phases[1]["typed"] == 2 and phases[1]["untyped"] == 1 and phases[1]["send_failures"] == 2
    assert phases[2]["lost"] == 1 and phases[2]["unsent"] == 1 and phases[2]["send_failures"] == 4


def _summary(records: list[dict[str, Any]], samples: list[dict[str, Any]]) -> dict[str, Any]:
    observed = {r["id"]: [{"ok": True, "worker": r["worker"], "started_at": r["started_at"]}]
                for r in records if r["outcome"] in ("ok", "wrong")}  # fmt: skip
    ids = [r["id"] for r in records if r["id"]]
    conditions = {"rate_per_s": 2.0, "load_s": 30.0, "initial_workers": 2, "initial_beats": 2,
                  "faults": ["restart-redis", "s3-outage"], "answer_timeout_s": 60.0, "visibility_timeout_s": 5.0,
                  "clients": 4, "environment": {"usable_cpus": 2, "torch": "x"}}  # fmt: skip
    return summarise(records, count_executions(observed, ids), observed, samples, TIMELINE, load_end_s=40.0,
                     conditions=conditions)  # fmt: skip


def test_summary_has_the_headline_and_judges_each_target() -> None:
    samples = _samples([9_000_000] * 11 + [1_000_000] * 30)
    result = _summary(_records(), samples)

    assert set(HEADLINE_KEYS) <= set(result)
    assert (result["requests"], result["answered_ok"], result["lost"], result["wrong"]) == (8, 2, 1, 1)
    assert result["typed_errors"] == 2 and result["untyped_errors"] == 1 and result["unsent"] == 1
    assert result["max_latency_s"] == pytest.approx(0.5)
    assert result["redis_peak_bytes"] == 9_000_000 and result["worker_peak_rss_bytes"] == 140
    assert result["memory"]["redis_flatness"]["window_s"] == [11.0, 40.0]
    assert result["executions"]["answers_not_seen_by_monitor"] == 0
    assert result["per_model"]["a"]["requests"] == 8 and result["per_model"]["a"]["typed_errors"] == 2
    assert set(result["targets"]) == set(TARGETS)
    met = {name: t["met"] for name, t in result["targets"].items()}
    assert met == {"no_lost": False, "no_wrong": False, "no_untyped_errors": False, "redis_memory_flat": True}
    lost = result["failed_requests"]["lost"][0]
    assert lost["after_fault"]["fault"] == "s3-outage" and lost["unacked_when"] == ["s3-outage: S3 stopped"]
    json.dumps(result, allow_nan=False)  # what write_json will do


def test_clean_run_meets_the_targets_and_tables_render() -> None:
    records = [_record(i, "ok", t=float(i)) for i in range(30)]
    result = _summary(records, _samples([1_000_000 + 10 * i for i in range(41)]))

    assert all(t["met"] for t in result["targets"].values())
    console = Console(file=io.StringIO(), width=200)
    for table in faults_tables(result):
        console.print(table)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "met" in text and "missed" not in text and "restart-redis" in text


def test_a_run_with_too_few_memory_samples_leaves_flatness_unjudged() -> None:
    result = _summary([_record(0, "ok")], _samples([1, 2]))

    assert result["targets"]["redis_memory_flat"]["met"] is None
    assert result["targets"]["no_lost"]["met"] is True
