"""The rollout benchmark's counting and targets, and the shadow judgement: plain values."""

from __future__ import annotations

from typing import Any

from warmstart.bench.rollout import summarise_phase, verdicts
from warmstart.scheduler.rollout import ShadowLimits, judge_shadow


def _record(phase: str, version: str | None = "v1", ok: bool = True, lost: bool = False, cold: bool = False) -> dict[str, Any]:
    return {"phase": phase, "version": version, "ok": ok, "lost": lost, "cold": cold, "latency_ms": 10.0, "error": None}


def test_a_phase_counts_failed_lost_cold_and_the_new_versions_share() -> None:
    records = [_record("good"), _record("good", "v2"), _record("good", "v2"), _record("good", None, ok=False),
               _record("good", None, ok=False, lost=True), _record("good", "v1", cold=True), _record("bad")]
    got = summarise_phase(records, "good", new_version="v2")
    assert got["requests"] == 6 and got["failed"] == 1 and got["lost"] == 1 and got["cold_waits"] == 1
    assert got["served_by_new"] == 2 and got["served_by_new_share"] == 2 / 4
    assert summarise_phase(records, "drain")["requests"] == 0


def test_the_targets_fail_on_any_failure_a_served_bad_version_or_a_missed_rollback() -> None:
    clean = {"failed": 0, "lost": 0, "cold_waits": 0}
    result = {"good": {**clean, "promoted": True}, "bad": {**clean, "rolled_back": True, "served_by_bad": 0},
              "slow": {**clean, "rolled_back": True}, "drain": dict(clean)}
    assert all(verdicts(result).values())
    served = {**result, "bad": {**result["bad"], "served_by_bad": 1}}
    assert not verdicts(served)["bad_rolled_back_before_serving"]
    lost = {**result, "drain": {**clean, "lost": 1}}
    assert not verdicts(lost)["lost_0_every_phase"] and verdicts(lost)["failed_0_every_phase"]
    assert not verdicts({**result, "slow": {**clean, "rolled_back": False}})["slow_rolled_back"]


def _side(version: str, errors: int = 0, non_finite: int = 0, p50: float = 1.0, p99: float = 2.0) -> dict[str, Any]:
    return {"version": version, "errors": errors, "non_finite": non_finite, "p50_ms": p50, "p99_ms": p99, "first_error": "boom"}


def _report(new: dict[str, Any], diff: float | None = 0.0) -> dict[str, Any]:
    return {"requests": 8, "rounds": 3, "source": "recent requests", "serving": _side("v1"), "staged": new, "max_abs_diff": diff}


def test_the_shadow_judgement_names_each_reason_to_roll_back() -> None:
    limits = ShadowLimits()
    assert judge_shadow(_report(_side("v2")), limits) == []
    assert "raised on 2 of 24" in judge_shadow(_report(_side("v2", errors=2)), limits)[0]
    assert "non-finite values on 3 of 24" in judge_shadow(_report(_side("v2", non_finite=3)), limits)[0]
    slow = judge_shadow(_report(_side("v2", p50=6.0, p99=9.0)), limits)
    assert len(slow) == 2 and all("slower" in r for r in slow)
    # 1.5× the time but under the absolute floor: timer noise on a sub-millisecond model.
    assert judge_shadow(_report(_side("v2", p50=1.6, p99=3.5)), limits) == []
    # Output agreement is judged only for a change declared compatible.
    assert judge_shadow(_report(_side("v2"), diff=0.5), limits) == []
    assert "differ by up to 0.5" in judge_shadow(_report(_side("v2"), diff=0.5), ShadowLimits(compatible=True))[0]


def test_the_canary_judgement_merges_workers_and_names_each_reason() -> None:
    from warmstart.scheduler.rollout import judge_canary, merge_canary

    def side(requests: int, errors: int = 0, non_finite: int = 0, p99: float = 2.0, p90: float = 1.5) -> dict[str, Any]:
        return {"requests": requests, "errors": errors, "non_finite": non_finite, "p50_ms": 1.0, "p90_ms": p90,
                "p99_ms": p99}  # fmt: skip

    merged = merge_canary([{"versions": {"v1": side(90), "v2": side(10, p99=2.5)}},
                           {"versions": {"v1": side(80, p99=3.0), "v2": side(12)}}])
    assert merged["v1"]["requests"] == 170 and merged["v2"]["requests"] == 22 and merged["v1"]["p99_ms"] == 3.0
    limits = ShadowLimits()
    assert judge_canary(merged, "v2", "v1", limits) == []
    assert "non-finite values on 1 of 20" in judge_canary({"v2": side(20, non_finite=1), "v1": side(100)}, "v2", "v1", limits)[0]
    assert "failed 3 of 20" in judge_canary({"v2": side(20, errors=3), "v1": side(100, errors=1)}, "v2", "v1", limits)[0]
    # As many failures as the serving version has (rate-wise): not the new version's fault.
    assert judge_canary({"v2": side(100, errors=5), "v1": side(100, errors=5)}, "v2", "v1", limits) == []
    assert "slower live: p99 9.0 ms" in judge_canary({"v2": side(100, p99=9.0), "v1": side(100)}, "v2", "v1", limits)[0]
    # Under 100 answers the p99 is the slowest one: one slow answer (a hiccup of the machine's)
    # is not a slower version; a tail that reaches the p90 is.
    assert judge_canary({"v2": side(20, p99=9.0), "v1": side(100)}, "v2", "v1", limits) == []
    assert "slower live: p90 9.0 ms" in judge_canary({"v2": side(20, p90=9.0), "v1": side(100)}, "v2", "v1", limits)[0]
    # A report without a p90 (a worker of the previous release) is not judged on it.
    old_worker = {k: v for k, v in side(20, p90=9.0).items() if k != "p90_ms"}
    assert judge_canary({"v2": old_worker, "v1": side(100)}, "v2", "v1", limits) == []
    # Too few answers to judge latency.
    assert judge_canary({"v2": side(3, p90=9.0, p99=9.0), "v1": side(100)}, "v2", "v1", limits) == []


def test_the_canary_share_target_is_judged_against_the_asked_share() -> None:
    clean = {"failed": 0, "lost": 0, "cold_waits": 0}
    result = {"config": {"canary_share": 0.1}, "good": {**clean, "promoted": True, "canary": {"observed_share": 0.13}}}
    assert verdicts(result)["canary_share_within_5_points"]
    result["good"]["canary"]["observed_share"] = 0.2
    assert not verdicts(result)["canary_share_within_5_points"]
