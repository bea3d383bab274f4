"""CLI commands for the scheduler: ``beat``, ``simulate``, ``advise``, ``demo``, ``alias``."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

import click


@click.command()
@click.option("--ticks", type=int, default=None, help="Stop after this many ticks (default: run until stopped).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
def beat(ctx: click.Context, ticks: int | None, loglevel: str) -> None:
    """Run the scheduler: pre-warm ahead of predicted demand, keep warm, demote, re-place
    the models of dead workers. Several may run; one acts at a time (a lease in Redis)."""
    from warmstart.cli import settings_from
    from warmstart.scheduler.beat import BeatScheduler

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from warmstart.scheduler.observe import serve_beat_probes

    scheduler = BeatScheduler(settings_from(ctx))
    probes = serve_beat_probes(scheduler.settings, scheduler.probes)  # a port in use: ServiceError, exit 2
    signal.signal(signal.SIGTERM, lambda *_: scheduler.stop())
    try:
        scheduler.run(max_ticks=ticks)
    except KeyboardInterrupt:
        scheduler.stop()
    finally:
        if probes is not None:
            probes.stop()


@click.command()
@click.argument("trace_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--policy", "policies", multiple=True, help="Policies to compare (default: fixed-10, hybrid, hybrid+host, warmstart).")
@click.option("--budget-bytes", type=int, default=None, help="Memory budget for cold_seconds (default: half the models' total).")
@click.option("--sweep/--no-sweep", default=False, help="Also run fixed-N and warmstart-B curves (slower).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the result as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Draw the cold-start vs waste plane (PNG).")
@click.option("--learn-minutes", type=click.IntRange(min=0), default=0, show_default=True,
              help="Replay this many first minutes without measuring them: policies enter the measured window with what they learned, as a beat that ran before does.")
@click.option("--headroom", is_flag=True, help="Also replay each warmstart policy's rule with hindsight knowledge of every model (what learning costs it), over the whole trace (not --learn-minutes).")
@click.pass_context
def simulate(ctx: click.Context, trace_dir: Path, policies: tuple[str, ...], budget_bytes: int | None, sweep: bool,
             json_path: Path | None, plot_path: Path | None, learn_minutes: int, headroom: bool) -> None:
    """Replay an Azure Functions trace through the scheduler's policies and compare them."""
    from warmstart.scheduler.report import print_headroom, print_simulation
    from warmstart.scheduler.simulator import simulate as run
    from warmstart.scheduler.traces import load_trace

    from rich.console import Console

    from warmstart.scheduler.costs import Prices

    from warmstart.cli import settings_from

    settings = settings_from(ctx)
    prices = Prices(gpu_gb_hour=settings.gpu_gb_hour_price, host_gb_hour=settings.host_gb_hour_price)
    trace = load_trace(trace_dir)
    result = run(trace, list(policies) or None, budget_bytes, sweep=sweep, prices=prices,
                 learn_minutes=learn_minutes)
    console = Console(width=max(Console().width, 120))
    print_simulation(result, console)
    if headroom:
        from warmstart.scheduler.headroom import measure_headroom
        from warmstart.scheduler.policies import make_policy
        from warmstart.scheduler.policies.warmstart import WarmstartPolicy

        ours = [name for name in result["policies"] if isinstance(make_policy(name), WarmstartPolicy)]
        result["headroom"] = measure_headroom(trace, ours or None)
        print_headroom(result["headroom"], console)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
        click.echo(f"wrote {json_path}", err=True)
    if plot_path:
        from warmstart.scheduler.plot import plot_tradeoff

        click.echo(f"wrote {plot_tradeoff(result, plot_path)}", err=True)


def live_trace(settings: Any, window_min: int) -> Any:
    """A Trace of the arrivals recorded in Redis over the last ``window_min`` minutes, with
    the published models' sizes (the advisor's input when no trace file is given)."""
    import time

    import numpy as np

    from warmstart.infra.redis_client import connect
    from warmstart.scheduler.traces import Trace
    from warmstart.scheduler.traffic import TrafficRecorder
    from warmstart.snapshot.catalog import list_models, read_manifest, resolve_version
    from warmstart.snapshot.stores import open_store

    store = open_store(settings)
    recorder = TrafficRecorder(connect(settings.redis_url), settings.traffic_retention_min, settings.traffic_minute_s)
    end = recorder.minute_of(time.time())
    start = end - window_min
    names = list_models(store)
    counts = np.zeros((len(names), window_min), dtype=np.int64)
    memory_mb = np.zeros(len(names))
    for i, model in enumerate(names):
        for minute, count in recorder.minute_counts(model, start, end).items():
            counts[i, minute - start] = count
        memory_mb[i] = read_manifest(store, model, resolve_version(store, model)).weights.size_bytes / 2**20
    return Trace(
        minutes=np.arange(start, end, dtype=np.int64), names=names, counts=counts,
        memory_mb=memory_mb, duration_ms=np.full(len(names), 10.0), source="redis",
    )  # fmt: skip


@click.command()
@click.option("--trace", "trace_dir", type=click.Path(exists=True, path_type=Path), help="An Azure Functions trace (default: the live traffic in Redis).")
@click.option("--window-min", type=int, default=1440, show_default=True, help="Live traffic window, in traffic minutes.")
@click.option("--policy", "policies", multiple=True, help="Policies to compare (default: fixed-10, hybrid, warmstart).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")
@click.pass_context
def advise(ctx: click.Context, trace_dir: Path | None, window_min: int, policies: tuple[str, ...], as_json: bool) -> None:
    """Per model: arrivals, cold starts and their seconds under each policy, memory cost at
    the configured prices, and the recommendation (eager or lazy, which tier)."""
    from warmstart.cli import settings_from
    from warmstart.scheduler.advisor import advise as run
    from warmstart.scheduler.costs import Prices
    from warmstart.scheduler.report import print_advice
    from warmstart.scheduler.traces import load_trace

    settings = settings_from(ctx)
    trace = load_trace(trace_dir) if trace_dir else live_trace(settings, window_min)
    prices = Prices(gpu_gb_hour=settings.gpu_gb_hour_price, host_gb_hour=settings.host_gb_hour_price)
    rows = run(trace, list(policies) or None, prices)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        from rich.console import Console

        print_advice(rows, Console(width=max(Console().width, 140)))


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--traffic-s", type=float, default=60.0, show_default=True, help="Seconds of replayed traffic per profile.")
@click.option("--rate", type=float, default=12.0, show_default=True, help="Mean requests per second.")
def demo(out_dir: Path, traffic_s: float, rate: float) -> None:
    """The end-to-end demo on embedded services: publish, restore, serve, schedule, compare
    the hot prod profile with the cold dev profile."""
    from warmstart.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out_dir=out_dir, traffic_s=traffic_s, mean_rate_per_s=rate))


@click.command()
@click.argument("model")
@click.argument("name")
@click.argument("version")
@click.option("--timeout-s", type=float, default=300.0, show_default=True,
              help="How long each worker may take to stage the version.")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.pass_context
def alias(ctx: click.Context, model: str, name: str, version: str, timeout_s: float, as_json: bool) -> None:
    """Point MODEL's alias NAME at VERSION. For `live`, every worker serving MODEL first
    loads VERSION beside the serving one, warms it up and checks it against its golden
    outputs; only then does the alias move and each worker switch, without a cold start.
    A version that cannot be made ready leaves the alias where it was (exit 2)."""
    from warmstart.cli import settings_from
    from warmstart.scheduler.alias import AliasMover

    mover = AliasMover(settings_from(ctx))
    try:
        moved = mover.move(model, name, version, timeout_s=timeout_s)
    finally:
        mover.app.close()
    if as_json:
        click.echo(json.dumps(moved.__dict__, indent=2))
        return
    click.echo(f"{model}: {name} -> {version} (was {moved.previous or 'unset'}) in {moved.seconds:.1f} s")
    for worker, done in sorted(moved.switched.items()):
        state = "switched" if done["switched"] else f"NOT switched ({done.get('error')})"
        click.echo(f"  {worker}: staged in {done['staged_s']} s, {state}")
    for worker in moved.reloaded:
        click.echo(f"  {worker}: reloads {version} (it held the model below HOT, or had no room for both versions)")


scheduler_commands = [beat, simulate, advise, demo, alias]
