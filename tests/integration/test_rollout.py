"""Rollouts driven by a real beat over two real workers under load: a good version is promoted
with every request answered; a version that answers NaN on real inputs its golden inputs lack
is caught by the shadow replay before any live request reaches it; a slow one is rolled back
on latency; a second rollout while one runs, and a rollback with nothing to go back to, are
typed errors; `warmstart rollback` after a promotion moves `live` back."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from warmstart.infra.celery_app import TASK_STATUS, control_queue
from warmstart.infra.errors import RolloutError
from warmstart.infra.redis_client import connect
from warmstart.infra.settings import load_settings
from warmstart.processes import ChildProcess, settings_env
from warmstart.scheduler.rollout import Rollouts, ShadowLimits, start_rollout
from warmstart.snapshot.catalog import get_alias
from warmstart.snapshot.stores import open_store
from warmstart.workers.client import Client
from warmstart.workers.registry import WorkerRegistry
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def test_rollouts_promote_the_good_version_and_roll_back_the_bad_and_the_slow(
        worker_settings, publish, start_worker, tmp_path) -> None:  # fmt: skip
    # Eager in prod: the beat keeps the model HOT on both workers, whatever its policy says.
    values = {**worker_settings, "plan_interval_s": 0.3, "scale_min_workers": 2, "profile": "prod", "eager_models": ["ro"]}
    settings = load_settings(**values)
    modules = {"v1": publish("ro", seed=1), "v2": publish("ro", version="v2", seed=2)}
    publish("ro", version="v3", seed=1, nan_above=4.0)  # NaN only on inputs far from its goldens
    publish("ro", version="v4", seed=2, delay_s=0.05)  # slow
    broken = tmp_path / "v5.flag"
    publish("ro", version="v5", flaky_flag=broken)
    broken.write_text("offset")  # v5 fails its golden check: the warm step must stop it
    for name in ("w-r1", "w-r2"):
        start_worker(name, profile="prod", eager_models=["ro"])
    beat = ChildProcess(["beat", "--loglevel", "WARNING"], values).start()
    client = Client(settings)
    try:
        store = open_store(settings)
        rollouts = Rollouts(connect(settings.redis_url))
        registry = WorkerRegistry(connect(settings.redis_url))
        wait_for(lambda: registry.hot_workers("ro") == ["w-r1", "w-r2"], timeout_s=60, what="ro HOT on both workers")

        stop = threading.Event()
        answers: list[object] = []

        def load() -> None:
            i = 0
            while not stop.is_set():
                x = torch.randn(2, 8)
                if i % 2:
                    x[0, 0] = 10.0  # a real input unlike the golden ones
                i += 1
                try:
                    pending = client.submit("ro", {"x": x}, timeout_s=60)
                    version = pending.raw()["version"]
                    with torch.inference_mode():
                        good = version in modules and torch.allclose(pending.get()["output"], modules[version](x), atol=1e-5)
                    answers.append((version, good))
                except Exception as e:  # judged below
                    answers.append(e)

        def finished(model: str = "ro") -> dict | None:
            record = rollouts.get(model)
            return record if record and record["phase"] in ("done", "rolled_back") else None

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(answers) >= 40, timeout_s=60, what="recorded requests")  # the shadow replays them
            limits = ShadowLimits()

            start_rollout(store, rollouts, "ro", "v2", limits, canary_share=0.3, bake_s=2.0)
            good = wait_for(finished, timeout_s=120, what="the good rollout ends")
            assert good["phase"] == "done", (good["reason"], good["history"], good["shadow"])
            assert [p for p, _ in good["history"]] == ["warm", "shadow", "canary", "promote", "done"]
            assert good["shadow"]["source"] == "recent requests" and good["shadow"]["staged"]["non_finite"] == 0
            # The canary: both workers answered a share of live requests with v2, counted per version.
            canary = good["canary_report"]
            assert good["canary_workers"] == ["w-r1", "w-r2"] and canary["versions"]["v2"]["requests"] > 0
            assert 0.1 < canary["observed_share"] < 0.5, canary
            assert get_alias(store, "ro", "live") == "v2" and set(good["switched"]) == {"w-r1", "w-r2"}
            after_good = len(answers)

            start_rollout(store, rollouts, "ro", "v3", limits, canary_share=0.3, bake_s=2.0)
            bad = wait_for(finished, timeout_s=120, what="the bad rollout ends")
            assert bad["phase"] == "rolled_back" and "non-finite" in bad["reason"], bad
            assert [p for p, _ in bad["history"]] == ["warm", "shadow", "rolled_back"]

            start_rollout(store, rollouts, "ro", "v4", limits, canary_share=0.0)
            with pytest.raises(RolloutError, match="in progress"):
                start_rollout(store, rollouts, "ro", "v3", limits, canary_share=0.3, bake_s=2.0)
            slow = wait_for(finished, timeout_s=120, what="the slow rollout ends")
            assert slow["phase"] == "rolled_back" and "slower" in slow["reason"], slow

            start_rollout(store, rollouts, "ro", "v5", limits, canary_share=0.3, bake_s=2.0)
            unready = wait_for(finished, timeout_s=120, what="the broken rollout ends")
            assert unready["phase"] == "rolled_back" and "HealthCheckError" in unready["reason"], unready
            assert [p for p, _ in unready["history"]] == ["warm", "rolled_back"]

            start_rollout(store, rollouts, "ro", "v4", limits, canary_share=0.0)
            rollouts.cancel("ro", "test")
            cancelled = wait_for(finished, timeout_s=120, what="the cancelled rollout ends")
            assert cancelled["phase"] == "rolled_back" and "by hand" in cancelled["reason"]
            with pytest.raises(RolloutError, match="already live"):
                start_rollout(store, rollouts, "ro", "v2", limits, canary_share=0.0)
            count = len(answers)
            wait_for(lambda: len(answers) >= count + 10, timeout_s=60)
        finally:
            stop.set()
            for t in threads:
                t.join(60)

        assert all(isinstance(a, tuple) and a[1] for a in answers), [a for a in answers if not (isinstance(a, tuple) and a[1])][:3]
        versions = [a[0] for a in answers]  # type: ignore[index]
        assert not {"v3", "v4", "v5"} & set(versions)  # the bad, the slow and the broken served nobody
        assert set(versions[after_good + 10:]) == {"v2"} and get_alias(store, "ro", "live") == "v2"
        assert {registry.models_of(w)["ro"]["version"] for w in ("w-r1", "w-r2")} == {"v2"}

        env = {**os.environ, **settings_env(worker_settings)}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "warmstart.cli", *args], capture_output=True, text=True, env=env, timeout=180)

        back = cli("rollback", "ro")  # the last rollout was rolled back: nothing went live to undo
        assert back.returncode == 2 and "no previous version" in back.stderr
        start_rollout(store, rollouts, "ro", "v1", ShadowLimits(), canary_share=0.0)  # v1 again, as a new version
        assert wait_for(finished, timeout_s=120)["phase"] == "done" and get_alias(store, "ro", "live") == "v1"
        back = cli("rollback", "ro")  # after a promotion: live goes back, staged and checked first
        assert back.returncode == 0, back.stderr
        assert get_alias(store, "ro", "live") == "v2"
        assert {registry.models_of(w)["ro"]["version"] for w in ("w-r1", "w-r2")} == {"v2"}
    finally:
        client.close()
        client.app.close()
        beat.close()


def test_each_check_rolls_a_bad_version_back_on_its_own(worker_settings, publish, start_worker) -> None:
    # The causes the first test does not reach: a version raising on recent real requests (its
    # warm-up replays them), outputs that disagree for a change declared compatible (shadow),
    # and non-finite answers and errors on live inputs that no recorded request had, which the
    # shadow therefore let through (canary).
    values = {**worker_settings, "plan_interval_s": 0.3, "scale_min_workers": 2, "profile": "prod", "eager_models": ["rc"]}
    settings = load_settings(**values)
    serving = publish("rc", seed=1)
    publish("rc", version="v2", seed=1, raise_above=4.0)  # raises on real inputs the goldens lack
    publish("rc", version="v3", seed=2)  # other weights: declared compatible, it is not
    publish("rc", version="v4", seed=1, nan_above=15.0)  # NaN only on inputs nobody sent before its canary
    publish("rc", version="v5", seed=1, raise_above=15.0)  # raises only on those
    publish("rc", version="v6", seed=1, delay_s=0.05, delay_above=15.0)  # 50 ms slower only on those
    publish("rc", version="v7", seed=1, delay_s=0.2)  # its warm-up outlasts the rollout's timeout
    for name in ("w-c1", "w-c2"):
        start_worker(name, profile="prod", eager_models=["rc"])
    beat = ChildProcess(["beat", "--loglevel", "WARNING"], values).start()
    client = Client(settings)
    stop, unusual = threading.Event(), threading.Event()
    answers: list[tuple[str, bool]] = []
    failures: list[tuple[bool, str]] = []  # (sent while the unusual inputs were on, the error)

    def load() -> None:
        i = 0
        while not stop.is_set():
            x = torch.randn(2, 8)
            on = unusual.is_set()
            if i % 2:
                x[0, 0] = 20.0 if on else 10.0  # real inputs unlike the golden ones
            i += 1
            try:
                pending = client.submit("rc", {"x": x}, timeout_s=60)
                version = pending.raw()["version"]
                with torch.inference_mode():
                    answers.append((version, bool(torch.allclose(pending.get()["output"], serving(x), atol=1e-5))))
            except Exception as e:  # judged below
                failures.append((on, f"{type(e).__name__}: {e}"))

    store = open_store(settings)
    rollouts = Rollouts(connect(settings.redis_url))
    registry = WorkerRegistry(connect(settings.redis_url))

    def finished() -> dict | None:
        record = rollouts.get("rc")
        return record if record and record["phase"] in ("done", "rolled_back") else None

    def baking() -> bool:
        record = rollouts.get("rc")
        return bool(record and record["phase"] == "canary" and record.get("bake_from"))

    threads = [threading.Thread(target=load) for _ in range(2)]
    try:
        wait_for(lambda: registry.hot_workers("rc") == ["w-c1", "w-c2"], timeout_s=60, what="rc HOT on both workers")
        for t in threads:
            t.start()
        wait_for(lambda: len(answers) >= 40, timeout_s=60, what="recorded requests")  # the shadow replays them

        start_rollout(store, rollouts, "rc", "v2", ShadowLimits(), canary_share=0.3, bake_s=2.0)
        raising = wait_for(finished, timeout_s=120, what="the raising rollout ends")
        # Its warm-up replays the recent requests too, so it fails there, before any shadow.
        assert [p for p, _ in raising["history"]] == ["warm", "rolled_back"], raising
        assert "ValueError: an input above 4.0" in raising["reason"], raising["reason"]

        start_rollout(store, rollouts, "rc", "v3", ShadowLimits(compatible=True), canary_share=0.3, bake_s=2.0)
        differing = wait_for(finished, timeout_s=120, what="the incompatible rollout ends")
        assert [p for p, _ in differing["history"]] == ["warm", "shadow", "rolled_back"], differing
        assert "declared compatible, but outputs differ" in differing["reason"]

        for version, cause in (("v4", "non-finite values on"), ("v5", "live requests ("), ("v6", "slower live")):
            start_rollout(store, rollouts, "rc", version, ShadowLimits(), canary_share=0.5, bake_s=60.0)
            wait_for(baking, timeout_s=120, what=f"the canary of {version} bakes")
            unusual.set()  # from now on, live inputs that no replayed request had
            caught = wait_for(finished, timeout_s=60, what=f"the canary of {version} is rolled back")
            unusual.clear()
            assert [p for p, _ in caught["history"]] == ["warm", "shadow", "canary", "rolled_back"], caught
            assert cause in caught["reason"] and "live" in caught["reason"], caught["reason"]
            assert caught["canary_report"]["versions"][version]["requests"] > 0
            # The recent requests each worker keeps (the next shadow replays them) are ordinary again.
            count = len(answers)
            wait_for(lambda: len(answers) >= count + 80, timeout_s=60)

        # A step with no answer in time: v7's warm-up (17 forwards of 200 ms) outlasts 1 s.
        start_rollout(store, rollouts, "rc", "v7", ShadowLimits(), timeout_s=1.0, canary_share=0.3, bake_s=2.0)
        late = wait_for(finished, timeout_s=60, what="the late rollout ends")
        assert [p for p, _ in late["history"]] == ["warm", "rolled_back"], late
        assert "the warm step got no answer within 1 s" in late["reason"]
        # The discard reached the stage in progress: once it ends, nothing is kept staged.
        def staged_or_staging() -> bool:
            asked = [client.app.send_task(TASK_STATUS, queue=control_queue(w)) for w in ("w-c1", "w-c2")]
            answers = [r.get(timeout=30) for r in asked]
            return any(a["staged"] or a["staging"] for a in answers)

        wait_for(lambda: not staged_or_staging(), timeout_s=60, what="the stage ends, keeping nothing")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        client.close()
        client.app.close()
        beat.close()

    # Only the canaries of v4, v5 and v6 answered anyone unlike v1 (wrongly, or slowly), and
    # only on the unusual inputs; every other answer is the serving version's, exact.
    assert failures and all(on for on, _ in failures), failures[:3]
    assert {v for v, _ in answers} <= {"v1", "v4", "v5", "v6"}
    assert all(ok for v, ok in answers if v in ("v1", "v6"))
    assert get_alias(store, "rc", "live") == "v1"
    assert {registry.models_of(w)["rc"]["version"] for w in ("w-c1", "w-c2")} == {"v1"}


def test_a_canary_without_room_beside_the_serving_copy_runs_on_a_worker_with_room(
        worker_settings, publish, start_worker) -> None:  # fmt: skip
    # w-t1 serves the model with room for one version only (a tiny model holds 288 bytes); w-t2
    # has room. The rollout stages the new version on w-t2, which first makes the serving
    # version HOT there to compare with; w-t1 sits the canary out and reloads the new version
    # once w-t2 has switched, so every request is answered, by v1 or by v2.
    values = {**worker_settings, "plan_interval_s": 0.3, "profile": "prod", "policy": "fixed-30"}
    settings = load_settings(**values)
    modules = {"v1": publish("rt", seed=1), "v2": publish("rt", version="v2", seed=2)}
    start_worker("w-t1", profile="prod", host_budget_bytes=400, device_budget_bytes=400)
    beat = ChildProcess(["beat", "--loglevel", "WARNING"], values).start()
    client = Client(settings)
    stop = threading.Event()
    answers: list[object] = []
    registry = WorkerRegistry(connect(settings.redis_url))
    rollouts = Rollouts(connect(settings.redis_url))

    def load() -> None:
        while not stop.is_set():
            x = torch.randn(2, 8)
            try:
                pending = client.submit("rt", {"x": x}, timeout_s=60)
                version = pending.raw()["version"]
                with torch.inference_mode():
                    answers.append((version, torch.allclose(pending.get()["output"], modules[version](x), atol=1e-5)))
            except Exception as e:  # judged below
                answers.append(e)

    threads = [threading.Thread(target=load) for _ in range(2)]
    try:
        client.infer("rt", {"x": torch.randn(2, 8)}, timeout_s=60)  # HOT on w-t1, the only worker
        wait_for(lambda: registry.hot_workers("rt") == ["w-t1"], timeout_s=60)
        start_worker("w-t2", profile="prod")
        for t in threads:
            t.start()
        wait_for(lambda: len(answers) >= 40, timeout_s=60, what="recorded requests")
        store = open_store(settings)
        # This test is about where the canary runs, not about latency: w-t2 loads v1 and v2 beside
        # the traffic on a shared machine, so a latency verdict here would judge the machine.
        start_rollout(store, rollouts, "rt", "v2", ShadowLimits(min_slowdown_ms=1000.0), canary_share=0.3, bake_s=3.0)
        done = wait_for(lambda: (r := rollouts.get("rt")) and r["phase"] in ("done", "rolled_back") and r,
                        timeout_s=120, what="the rollout ends")  # fmt: skip
        assert done["phase"] == "done", (done["reason"], done["history"])
        assert done["canary"] == "w-t2" and done["canary_serves_first"] and set(done["switched"]) == {"w-t2"}
        assert done["canary_skipped"]["w-t1"].startswith("BudgetError")
        assert done["canary_report"]["versions"]["v2"]["requests"] > 0  # w-t2 answered its share with v2
        assert get_alias(store, "rt", "live") == "v2"
        # w-t1 reloads v2 after w-t2 switched (or the planner keeps one copy): v2 wherever it is HOT.
        wait_for(lambda: (hot := registry.hot_workers("rt"))
                 and all(registry.models_of(w)["rt"]["version"] == "v2" for w in hot), timeout_s=60)  # fmt: skip
        count = len(answers)
        wait_for(lambda: len(answers) >= count + 20, timeout_s=60)
    finally:
        stop.set()
        for t in threads:
            if t.ident is not None:
                t.join(60)
        client.close()
        client.app.close()
        beat.close()
    assert all(isinstance(a, tuple) and a[1] for a in answers), [a for a in answers if not (isinstance(a, tuple) and a[1])][:3]
    assert {a[0] for a in answers[-20:]} == {"v2"}  # type: ignore[index]
