"""``warmstart bench …``: benchmarks that print tables and write JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

#: Options every benchmark that writes JSON, or works in a temporary directory, takes.
json_option = click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                           help="Also write the result as JSON to this file.")  # fmt: skip
workdir_option = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
                              help="Parent of the run's temporary directory (default: the system temp dir).")  # fmt: skip


@click.group()
def bench() -> None:
    """Benchmarks: each prints a table and writes JSON; baselines run side by side."""


@bench.command("restore")
@click.option("--size-mb", type=click.FloatRange(min=0, min_open=True), default=256,
              show_default=True, help="Target size of the model's float32 weights, MiB.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Fresh processes per path and cache state; the median is reported.")
@click.option("--steady-runs", type=click.IntRange(min=1), default=5, show_default=True,
              help="Forward passes after the first; their median is the steady latency.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Parent of the run's temporary directory (default: the system temp dir). "
                   "Put it on the disk you want the cold-file numbers for.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch intra-op threads in every probe (default: torch's, one per core).")
@json_option
@click.option("--hf-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Instead: this Hugging Face folder, warmstart vs from_pretrained vs torch.load + init.")
def restore(
    size_mb: float, repeats: int, steady_runs: int, workdir: Path | None, threads: int | None,
    json_path: Path | None, hf_dir: Path | None,
) -> None:
    """Restore latency: warmstart vs torch.load, safetensors and tensorizer, each in a fresh
    process, page-cached and from a cold file (or, with --hf-dir, a Hugging Face folder)."""
    from warmstart.bench.report import print_tables, write_json

    if hf_dir is not None:
        from warmstart.bench.restore_hf import restore_hf_tables, run_restore_hf_benchmark

        hf_result = run_restore_hf_benchmark(hf_dir, repeats, progress=lambda line: click.echo(line, err=True))
        print_tables(restore_hf_tables(hf_result))
        if json_path is not None:
            write_json(json_path, hf_result)
            click.echo(f"wrote {json_path}", err=True)
        return
    from warmstart.bench.restore import RestoreBenchConfig, restore_tables, run_restore_benchmark

    config = RestoreBenchConfig(
        size_mb=size_mb, repeats=repeats, steady_runs=steady_runs, workdir=workdir, threads=threads
    )
    result = run_restore_benchmark(config, progress=lambda line: click.echo(line, err=True))
    print_tables(restore_tables(result))
    if json_path is not None:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}", err=True)


@bench.command("serve")
@click.option("--size-mb", type=click.FloatRange(min=0, min_open=True), default=256,
              show_default=True, help="Target size of the model's float32 weights, MiB.")
@click.option("--requests", type=click.IntRange(min=1), default=500, show_default=True,
              help="Timed warm inferences (as many echoes are interleaved with them).")
@click.option("--cold-repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Lazy cold starts, and as many naive ones; the median is reported.")
@click.option("--warmup-requests", type=click.IntRange(min=0), default=20, show_default=True,
              help="Untimed inference/echo pairs before the timed ones.")
@workdir_option
@json_option
def serve(
    size_mb: float, requests: int, cold_repeats: int, warmup_requests: int, workdir: Path | None,
    json_path: Path | None,
) -> None:
    """Serving overhead: warm requests against a bare Celery echo, and a lazy cold start
    against a fresh torch.load process. Starts its own redis-server and worker."""
    from warmstart.bench.report import print_tables, write_json
    from warmstart.bench.serve import ServeBenchConfig, run_serve_benchmark, serve_tables

    config = ServeBenchConfig(
        size_mb=size_mb, requests=requests, cold_repeats=cold_repeats,
        warmup_requests=warmup_requests, workdir=workdir,
    )  # fmt: skip
    result = run_serve_benchmark(config, progress=lambda line: click.echo(line, err=True))
    print_tables(serve_tables(result))
    if json_path is not None:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}", err=True)


@bench.command("batch")
@click.option("--clients", type=click.IntRange(min=1, max=64), default=32, show_default=True,
              help="Concurrent clients, each sending requests back to back.")
@click.option("--requests", type=click.IntRange(min=1), default=640, show_default=True,
              help="Timed requests per path (batching off, on, and bare echo).")
@click.option("--max-wait-ms", type=click.FloatRange(min=0, max=1000), default=5.0, show_default=True,
              help="The batched model's max_wait_ms.")
@click.option("--seq", type=click.IntRange(min=1, max=512), default=32, show_default=True,
              help="Tokens per request.")
@json_option
def batch_bench(clients: int, requests: int, max_wait_ms: float, seq: int, json_path: Path | None) -> None:
    """Dynamic batching: a MiniLM-size encoder with batching off and on, and a bare Celery
    echo, from concurrent clients. Starts its own redis-server and worker."""
    from warmstart.bench.batch import BatchBenchConfig, batch_tables, run_batch_benchmark
    from warmstart.bench.report import print_tables, write_json

    config = BatchBenchConfig(clients=clients, requests=requests, seq=seq, max_batch=clients, max_wait_ms=max_wait_ms)
    result = run_batch_benchmark(config, progress=lambda line: click.echo(line, err=True))
    print_tables(batch_tables(result))
    if json_path is not None:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}", err=True)


@bench.command("autoscale")
@click.option("--mode", "modes", type=click.Choice(["predictive", "reactive", "fixed"]), multiple=True,
              help="Modes to run (repeatable; default: all three, same traffic).")
@click.option("--minute-s", type=click.FloatRange(min=0.5), default=2.0, show_default=True,
              help="Wall-clock seconds of one traffic minute.")
@click.option("--night-min", type=click.IntRange(min=1), default=30, show_default=True, help="Quiet minutes before the surge.")
@click.option("--surge-min", type=click.IntRange(min=1), default=8, show_default=True, help="Minutes of surge.")
@click.option("--after-min", type=click.IntRange(min=0), default=8, show_default=True, help="Quiet minutes after it.")
@click.option("--night-rate", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Requests per second at night.")
@click.option("--surge-factor", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="The surge's rate as a multiple of the night's.")
@click.option("--max-workers", type=click.IntRange(min=1, max=8), default=3, show_default=True)
@workdir_option
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw workers and tiers over time, per mode, to this PNG.")
@json_option
def autoscale_bench(modes: tuple[str, ...], minute_s: float, night_min: int, surge_min: int, after_min: int,
                    night_rate: float, surge_factor: float, max_workers: int, workdir: Path | None,
                    plot_path: Path | None, json_path: Path | None) -> None:
    """Autoscaling ahead of a surge: the local scaler following desired_workers (predictive)
    against a queue-length scaler with lazy workers (reactive) and the most workers all day
    (fixed), on the same compressed day. Starts its own redis-server, S3 and workers."""
    from warmstart.bench.autoscale import MODES, DayShape
    from warmstart.bench.autoscale_report import autoscale_tables, plot_autoscale
    from warmstart.bench.autoscale_run import AutoscaleBenchConfig, run_autoscale_benchmark

    shape = DayShape(minute_s, night_min, surge_min, after_min, night_rate, surge_factor)
    config = AutoscaleBenchConfig(shape=shape, modes=modes or MODES, max_workers=max_workers, workdir=workdir)
    result = run_autoscale_benchmark(config, say=lambda line: click.echo(line, err=True))
    _report(result, autoscale_tables, plot_autoscale, plot_path, json_path)


def _report(result: dict[str, Any], tables: Any, plot: Any, plot_path: Path | None, json_path: Path | None) -> None:
    """Add the environment, print the tables, draw the picture and write the JSON (each when asked)."""
    from warmstart.bench.report import environment, print_tables, write_json

    result["environment"] = environment()
    print_tables(tables(result))
    if plot_path is not None:
        click.echo(f"wrote {plot(result, plot_path)}", err=True)
    if json_path is not None:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}", err=True)


@bench.command("compile")
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True, help="Rounds of the four probes.")
@workdir_option
@json_option
def compile_bench(repeats: int, workdir: Path | None, json_path: Path | None) -> None:
    """Time to HOT of a model published with --compile inductor: empty compile cache, the
    host's warm cache, a signed artifact from the store, and the same weights eagerly; each in
    fresh processes, warmed alike (about 3 minutes on 2 cores)."""
    from warmstart.bench.compile import compile_tables, run_compile_benchmark

    result = run_compile_benchmark(repeats, workdir, progress=lambda line: click.echo(line, err=True))
    _report(result, compile_tables, None, None, json_path)  # no picture


@bench.command("rollout")
@click.option("--rate", type=click.FloatRange(min=1), default=20.0, show_default=True, help="Requests per second, all phases.")
@workdir_option
@json_option
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw which version answered over time, phase by phase, to this PNG.")
def rollout_bench(rate: float, workdir: Path | None, json_path: Path | None, plot_path: Path | None) -> None:
    """Rollouts under steady load on two workers and a beat: a good version (promoted), a bad
    one (NaN on real inputs its goldens lack: must be rolled back before serving anyone), a
    slow one (3x the work: rolled back), then the model's worker drained. Starts its own
    redis-server, S3 and workers."""
    from warmstart.bench.rollout import plot_rollout, rollout_tables
    from warmstart.bench.rollout_run import RolloutBenchConfig, run_rollout_benchmark

    result = run_rollout_benchmark(RolloutBenchConfig(rate_per_s=rate, workdir=workdir),
                                   say=lambda line: click.echo(line, err=True))  # fmt: skip
    _report(result, rollout_tables, plot_rollout, plot_path, json_path)


@bench.command("plan")
@click.option("--models", type=click.IntRange(min=1), default=10_000, show_default=True, help="Models in the fleet.")
@click.option("--workers", type=click.IntRange(min=1), default=100, show_default=True, help="Live workers.")
@click.option("--history-min", type=click.IntRange(min=1), default=60, show_default=True,
              help="Minutes of traffic fed to the policies before the timed tick.")
@json_option
def plan_bench(models: int, workers: int, history_min: int, json_path: Path | None) -> None:
    """One beat tick at scale (policy steps for one minute of every model, then plan()),
    for warmstart and the reference policies. No Redis: the pure part of the tick."""
    from warmstart.bench.plan import PlanBenchConfig, plan_tables, run_plan_benchmark
    from warmstart.bench.report import print_tables, write_json

    result = run_plan_benchmark(PlanBenchConfig(models=models, workers=workers, history_min=history_min),
                                progress=lambda line: click.echo(line, err=True))
    print_tables(plan_tables(result))
    if json_path is not None:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}", err=True)


@bench.command("replay")
@click.argument("trace_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--functions", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Functions (models) after tiling the trace.")
@click.option("--minutes", type=click.IntRange(min=2), default=1440, show_default=True,
              help="Minutes after tiling the trace.")
@json_option
def replay_bench(trace_dir: Path, functions: int, minutes: int, json_path: Path | None) -> None:
    """Simulator speed: replay a trace tiled to FUNCTIONS × MINUTES under warmstart and the
    reference policies."""
    from warmstart.bench.replay import ReplayBenchConfig, replay_tables, run_replay_benchmark
    from warmstart.bench.report import print_tables, write_json

    result = run_replay_benchmark(ReplayBenchConfig(trace_dir, functions, minutes),
                                  progress=lambda line: click.echo(line, err=True))
    print_tables(replay_tables(result))
    if json_path is not None:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}", err=True)


@bench.command("faults")
@click.option("--requests", type=click.IntRange(min=1), default=3000, show_default=True,
              help="Requests to send (each retried while sending fails).")
@click.option("--rate", "rate_per_s", type=click.FloatRange(min=0, min_open=True), default=40.0, show_default=True,
              help="Requests per second, at a fixed rate.")
@click.option("--clients", type=click.IntRange(min=1, max=64), default=4, show_default=True,
              help="Client threads sending the requests.")
@click.option("--faults", "faults_csv", default="kill-worker,restart-redis,kill-beat,term-worker,s3-outage",
              show_default=True, help="Faults to inject, in order, spread evenly over the load ('' for none).")
@click.option("--answer-timeout-s", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="How long a sent request may wait for its answer before it counts as lost.")
@click.option("--s3-outage-s", type=click.FloatRange(min=0), default=8.0, show_default=True,
              help="How long S3 stays down.")
@click.option("--redis-down-s", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="How long Redis stays down when it is restarted.")
@click.option("--visibility-timeout-s", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="When a dead worker's unacknowledged request goes to another worker.")
@click.option("--seed", type=int, default=7, show_default=True, help="Seeds the request mix.")
@workdir_option
@click.option("--logs-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep every worker's and beat's full log here.")
@json_option
def faults(
    requests: int, rate_per_s: float, clients: int, faults_csv: str, answer_timeout_s: float, s3_outage_s: float,
    redis_down_s: float, visibility_timeout_s: float, seed: int, workdir: Path | None, logs_dir: Path | None,
    json_path: Path | None,
) -> None:
    """Faults under load: kill and stop workers, kill the leading beat, restart Redis, take
    S3 away, and count lost, wrong, duplicated and failed requests. Starts its own
    redis-server, S3 (moto), workers and beats."""
    from warmstart.bench.faults import FAULTS, FaultBenchConfig, faults_tables, run_faults_benchmark
    from warmstart.bench.report import print_tables, write_json

    chosen = tuple(f.strip() for f in faults_csv.split(",") if f.strip())
    unknown = [f for f in chosen if f not in FAULTS]
    if unknown or len(set(chosen)) != len(chosen):
        raise click.BadParameter(f"choose distinct faults among {', '.join(FAULTS)}", param_hint="--faults")
    config = FaultBenchConfig(
        requests=requests, rate_per_s=rate_per_s, clients=clients, faults=chosen, answer_timeout_s=answer_timeout_s,
        s3_outage_s=s3_outage_s, redis_down_s=redis_down_s, visibility_timeout_s=visibility_timeout_s, seed=seed,
        workdir=workdir, logs_dir=logs_dir,
    )  # fmt: skip
    result = run_faults_benchmark(config, progress=lambda line: click.echo(line, err=True))
    print_tables(faults_tables(result))
    if json_path is not None:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}", err=True)
