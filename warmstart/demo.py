"""``make demo`` / ``warmstart demo``: the project's main job, end to end, on embedded defaults.

1. Start a private redis-server and moto's S3 server; publish the five-model recommendation
   system to S3; fetch and restore each, side by side with ``torch.load`` of the same weights.
2. Run the same replayed traffic twice, once per profile, each on a fresh worker with an
   empty cache and the beat scheduler: ``prod`` (hot: eager models pre-warmed before the
   worker joins, the planner keeps models warm ahead of demand) and ``dev`` (cold: every
   model loads on its first request). Traffic has the 79/15/5/0.7/0.3 % shares and a daily
   pattern compressed into the run (one traffic "minute" = one second).
3. Report per profile and model: requests, cold starts, p50/p99 latency, memory used, and a
   plot of which model sat at which tier over time (``demo-out/tiers.png``).
4. A surge: a quiet night, then ten times the traffic within one minute, bringing in the two
   large models, at a time of day the earlier (recorded) days saw it. The local scaler
   following the beat's ``desired_workers`` (workers join with the surge's models HOT) and,
   on the same traffic, a queue-length scaler with lazy workers (``warmstart bench
   autoscale``'s ``predictive`` and ``reactive`` modes, shortened); workers and tiers over
   time in ``demo-out/surge.png``.
5. A rollout under steady traffic on two workers and a beat (``warmstart bench rollout``'s
   ``good`` and ``bad`` phases): a good version is staged, checked, replayed against recorded
   requests and promoted with no cold start; a version that answers NaN on real inputs its
   golden inputs lack is caught by the shadow replay and rolled back before it answers anyone;
   which version answered, second by second, in ``demo-out/rollout.png``.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmstart.processes import ChildProcess, WorkerProcess
from warmstart.infra.redis_client import connect
from warmstart.infra.services import EmbeddedRedis, EmbeddedS3, apply_test_credentials

MiB = 1024**2
TIER_LEVEL = {"REMOTE": 0, "DISK": 1, "HOST": 2, "DEVICE": 3, "HOT": 4}


@dataclass
class DemoConfig:
    out_dir: Path = Path("demo-out")
    traffic_s: float = 60.0
    mean_rate_per_s: float = 12.0
    # The five models need 61.7 MiB and the three eager ones 58 MiB: the eager ones and one
    # rare one fit HOT together, the two rare ones take turns.
    device_budget_bytes: int = 61 * MiB
    host_budget_bytes: int = 128 * MiB
    seed: int = 7
    surge: bool = True  # step 4 (about three minutes)
    rollout: bool = True  # step 5 (about half a minute)


@dataclass
class ProfileRun:
    profile: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    tiers: list[dict[str, Any]] = field(default_factory=list)
    usage: list[dict[str, Any]] = field(default_factory=list)


def _restore_section(store: Any, workdir: Path, console: Any) -> list[dict[str, Any]]:
    """Fetch and restore each published model, with torch.load of the same weights beside it."""
    import torch
    from rich.table import Table

    from warmstart.snapshot.cache import SnapshotCache
    from warmstart.snapshot.catalog import read_manifest, resolve_version
    from warmstart.snapshot.examples import EXAMPLE_MODELS
    from warmstart.snapshot.process import prepare_process
    from warmstart.snapshot.registry import resolve_factory
    from warmstart.snapshot.restore import restore_model

    prepare_process("cpu")
    cache = SnapshotCache(workdir / "restore-cache", 1024 * MiB)
    rows = []
    for name in EXAMPLE_MODELS:
        manifest = read_manifest(store, name, resolve_version(store, name))
        t0 = time.perf_counter()
        local = cache.fetch(store, manifest)
        fetch_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        module = restore_model(local.weights_path, manifest)
        restore_s = time.perf_counter() - t0
        pt_path = workdir / f"{name}.pt"
        torch.save(module.state_dict(), pt_path)  # the baseline's file format, demo only
        factory = resolve_factory(manifest.architecture.factory)
        t0 = time.perf_counter()
        baseline = factory(**manifest.architecture.kwargs)
        baseline.load_state_dict(torch.load(pt_path, weights_only=True))
        torch_load_s = time.perf_counter() - t0
        rows.append({"model": name, "size_bytes": manifest.weights.size_bytes, "fetch_s": fetch_s,
                     "restore_s": restore_s, "torch_load_s": torch_load_s})  # fmt: skip
    table = Table(title="publish → fetch → restore (page-cached), vs torch.load + init")
    for col in ("model", "size", "fetch from S3", "warmstart restore", "torch.load + init", "speed-up"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for r in rows:
        table.add_row(r["model"], f"{r['size_bytes'] / MiB:.1f} MiB", f"{r['fetch_s'] * 1000:.0f} ms",
                      f"{r['restore_s'] * 1000:.1f} ms", f"{r['torch_load_s'] * 1000:.1f} ms",
                      f"{r['torch_load_s'] / r['restore_s']:.0f}×")  # fmt: skip
    console.print(table)
    return rows


def _rate(t_s: float, cfg: DemoConfig) -> float:
    """Requests per second at ``t_s``: a day compressed into the run (low at night, a peak)."""
    phase = 2 * math.pi * t_s / cfg.traffic_s
    return cfg.mean_rate_per_s * (1.0 - 0.7 * math.cos(phase))


def _schedule(cfg: DemoConfig, shares: dict[str, float]) -> list[tuple[float, str]]:
    """The arrival times and models of the replay, the same for both profiles (seeded)."""
    rng = random.Random(cfg.seed)
    names, weights = list(shares), list(shares.values())
    arrivals, t = [], 0.0
    peak = cfg.mean_rate_per_s * 1.7
    while True:  # thinning: a Poisson process of the time-varying rate
        t += rng.expovariate(peak)
        if t >= cfg.traffic_s:
            return arrivals
        if rng.random() < _rate(t, cfg) / peak:
            arrivals.append((t, rng.choices(names, weights)[0]))


def _run_profile(profile: str, cfg: DemoConfig, base: dict[str, Any], schedule: list[tuple[float, str]],
                 workdir: Path, console: Any) -> ProfileRun:
    import redis as redis_py

    from warmstart.infra.settings import load_settings
    from warmstart.snapshot.examples import EXAMPLE_MODELS
    from warmstart.workers.client import Client
    from warmstart.workers.registry import WorkerRegistry

    redis_py.Redis.from_url(base["redis_url"]).flushdb()
    cache_dir = workdir / f"cache-{profile}"
    shutil.rmtree(cache_dir, ignore_errors=True)
    eager = [n for n, e in EXAMPLE_MODELS.items() if e.eager]
    values = {**base, "profile": profile, "cache_dir": str(cache_dir), "eager_models": eager,
              "worker_name": f"demo-{profile}"}  # fmt: skip
    settings = load_settings(**values)
    run = ProfileRun(profile)
    worker = WorkerProcess(f"demo-{profile}", values, concurrency=4).start()
    beat = ChildProcess(["beat", "--loglevel", "WARNING"], values).start()
    stop = threading.Event()
    try:
        worker.wait_ready()
        registry = WorkerRegistry(connect(settings.redis_url))
        if profile == "prod":  # a new instance pre-warms its eager models before it joins
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(registry.hot_workers(m) for m in eager):
                time.sleep(0.1)
        console.print(f"[bold]{profile}[/]: worker ready, replaying {len(schedule)} requests "
                      f"over {cfg.traffic_s:.0f} s")  # fmt: skip
        start = time.monotonic()
        sampler = threading.Thread(target=_sample, args=(registry, worker.name, run, start, stop), daemon=True)
        sampler.start()
        client = Client(settings)
        inputs = {n: [e.golden_inputs(seed=s, batch=1) for s in range(4)] for n, e in EXAMPLE_MODELS.items()}
        with ThreadPoolExecutor(16) as waiters:
            for i, (at, model) in enumerate(schedule):
                delay = start + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                sent = time.monotonic()
                pending = client.submit(model, inputs[model][i % 4], timeout_s=60)
                waiters.submit(_wait, pending, sent, start, run)
        stop.set()
        sampler.join()
        from warmstart.cli.workers import collect_status, print_status

        print_status(collect_status(settings))  # what `warmstart status` prints
    finally:
        stop.set()
        beat.close()
        worker.close()
    return run


def _wait(pending: Any, sent: float, start: float, run: ProfileRun) -> None:
    try:
        answer = pending.raw()
        ok = True
    except Exception as e:  # noqa: BLE001 - the report counts failures, whatever they are
        answer, ok = {"error": str(e)}, False
    run.requests.append({"model": pending.model, "t_s": sent - start, "latency_s": time.monotonic() - sent,
                         "cold": pending.cold, "ok": ok and bool(answer.get("ok"))})  # fmt: skip


def _sample(registry: Any, worker: str, run: ProfileRun, start: float, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        t = time.monotonic() - start
        models = registry.models_of(worker)
        run.tiers.append({"t_s": t, "tiers": {m: s["tier"] for m, s in models.items()}})
        info = registry.workers()[0].get(worker, {})
        run.usage.append({"t_s": t, **info.get("usage", {})})


def _summary(run: ProfileRun, names: list[str]) -> dict[str, Any]:
    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    per_model = {}
    for name in names + ["all"]:
        reqs = [r for r in run.requests if name in ("all", r["model"])]
        lat = [r["latency_s"] for r in reqs if r["ok"]]
        per_model[name] = {
            "requests": len(reqs),
            "failed": sum(not r["ok"] for r in reqs),
            "cold_starts": sum(r["cold"] for r in reqs),
            "p50_ms": (pct(lat, 0.5) or 0) * 1000 if lat else None,
            "p99_ms": (pct(lat, 0.99) or 0) * 1000 if lat else None,
        }
    device = [u.get("device_bytes", 0) for u in run.usage]
    return {
        "models": per_model,
        "device_bytes_mean": statistics.mean(device) if device else 0,
        "device_bytes_max": max(device) if device else 0,
    }


def _plot(runs: list[ProfileRun], names: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colors = ListedColormap(["#eeeeee", "#c6dbef", "#6baed6", "#2171b5", "#e6550d"])
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.2 * len(runs) + 0.6), sharex=True)
    for ax, run in zip(axes, runs):
        grid = [[TIER_LEVEL.get(s["tiers"].get(n, "REMOTE"), 0) for s in run.tiers] for n in names]
        times = [s["t_s"] for s in run.tiers] or [0.0]
        ax.imshow(grid, aspect="auto", cmap=colors, vmin=0, vmax=4, interpolation="nearest",
                  extent=(times[0], times[-1], len(names) - 0.5, -0.5))  # fmt: skip
        ax.set_yticks(range(len(names)), names)
        ax.set_title(f"profile {run.profile}: tier per model (grey remote · blues disk/host/device · orange HOT)")
        colds = [r for r in run.requests if r["cold"]]
        ax.scatter([r["t_s"] for r in colds], [names.index(r["model"]) for r in colds], marker="x",
                   color="black", s=18, label="cold start")  # fmt: skip
        if colds:
            ax.legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel("seconds into the replay (one traffic minute = 1 s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _surge_section(cfg: DemoConfig, console: Any) -> dict[str, Any]:
    """Step 4: the autoscale benchmark's predictive and reactive modes on a short day."""
    from warmstart.bench.autoscale import DayShape
    from warmstart.bench.autoscale_report import autoscale_tables, plot_autoscale
    from warmstart.bench.autoscale_run import AutoscaleBenchConfig, run_autoscale_benchmark
    from warmstart.bench.report import print_tables

    console.print("[bold]surge[/]: a quiet night, then 10x the traffic within one minute (predictive vs reactive scaling)")
    shape = DayShape(minute_s=2.0, night_min=12, surge_min=5, after_min=3)
    config = AutoscaleBenchConfig(shape=shape, modes=("predictive", "reactive"), seed=cfg.seed)
    result = run_autoscale_benchmark(config, say=lambda line: console.print(line))
    print_tables(autoscale_tables(result), console)
    picture = plot_autoscale(result, cfg.out_dir / "surge.png")
    console.print(f"wrote {picture}")
    return {k: v for k, v in result.items() if k != "timelines"}


def _rollout_section(cfg: DemoConfig, console: Any) -> dict[str, Any]:
    """Step 5: the rollout benchmark's good and bad phases."""
    from warmstart.bench.report import print_tables
    from warmstart.bench.rollout import plot_rollout, rollout_tables
    from warmstart.bench.rollout_run import RolloutBenchConfig, run_rollout_benchmark

    console.print("[bold]rollout[/]: a good version promoted, a bad one (NaN on real inputs) rolled back, under load")
    result = run_rollout_benchmark(RolloutBenchConfig(phases=("good", "bad")), say=lambda line: console.print(line))
    print_tables(rollout_tables(result), console)
    console.print(f"wrote {plot_rollout(result, cfg.out_dir / 'rollout.png')}")
    return {k: v for k, v in result.items() if k != "timeline"}


def run_demo(cfg: DemoConfig | None = None) -> dict[str, Any]:
    """Run the whole demo; returns the report (also written to ``out_dir/report.json``)."""
    from rich.console import Console
    from rich.table import Table

    from warmstart.snapshot.examples import EXAMPLE_MODELS
    from warmstart.snapshot.publish import publish_examples
    from warmstart.snapshot.stores.s3 import S3Store

    cfg = cfg or DemoConfig()
    console = Console(width=max(Console().width, 110))
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="warmstart-demo-"))
    apply_test_credentials()
    try:
        with EmbeddedRedis() as redis_server, EmbeddedS3() as s3_server:
            console.print(f"redis-server at {redis_server.url}, S3 (moto) at {s3_server.url}")
            store = S3Store("warmstart-demo", "models", endpoint_url=s3_server.url)
            store.ensure_bucket()
            t0 = time.perf_counter()
            publish_examples(store, show_progress=False)
            console.print(f"published {len(EXAMPLE_MODELS)} models to s3://warmstart-demo/models in "
                          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
            restore_rows = _restore_section(store, workdir, console)
            base = {
                "redis_url": redis_server.url, "store_url": "s3://warmstart-demo/models",
                "s3_endpoint_url": s3_server.url, "device": "cpu",
                "device_budget_bytes": cfg.device_budget_bytes, "host_budget_bytes": cfg.host_budget_bytes,
                "traffic_minute_s": 1.0, "plan_interval_s": 1.0, "keep_warm_interval_s": 10.0,
                "health_interval_s": 5.0, "heartbeat_interval_s": 0.5, "heartbeat_ttl_s": 5.0,
            }  # fmt: skip
            shares = {n: e.traffic_share for n, e in EXAMPLE_MODELS.items()}
            schedule = _schedule(cfg, shares)
            runs = [_run_profile(p, cfg, base, schedule, workdir, console) for p in ("prod", "dev")]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    names = list(EXAMPLE_MODELS)
    summaries = {run.profile: _summary(run, names) for run in runs}
    table = Table(title="prod (hot) vs dev (cold): the same replayed traffic")
    for col in ("model", "requests", "cold prod", "cold dev", "p50 prod", "p50 dev", "p99 prod", "p99 dev"):
        table.add_column(col, justify="left" if col == "model" else "right")

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    for name in names + ["all"]:
        p, d = summaries["prod"]["models"][name], summaries["dev"]["models"][name]
        table.add_row(name, str(p["requests"]), str(p["cold_starts"]), str(d["cold_starts"]),
                      ms(p["p50_ms"]), ms(d["p50_ms"]), ms(p["p99_ms"]), ms(d["p99_ms"]))  # fmt: skip
    console.print(table)
    for profile, summary in summaries.items():
        console.print(f"{profile}: device memory used mean {summary['device_bytes_mean'] / MiB:.1f} MiB, "
                      f"max {summary['device_bytes_max'] / MiB:.1f} MiB (budget {cfg.device_budget_bytes / MiB:.0f} MiB); "
                      f"failed requests {summary['models']['all']['failed']}")  # fmt: skip
    plot = _plot(runs, names, cfg.out_dir / "tiers.png")
    report = {"restore": restore_rows, "profiles": summaries,
              "timeline": {r.profile: {"tiers": r.tiers, "usage": r.usage} for r in runs}}  # fmt: skip
    if cfg.surge:
        report["surge"] = _surge_section(cfg, console)
    if cfg.rollout:
        report["rollout"] = _rollout_section(cfg, console)
    (cfg.out_dir / "report.json").write_text(json.dumps(report, indent=2))
    console.print(f"wrote {cfg.out_dir / 'report.json'} and {plot}")
    return report
