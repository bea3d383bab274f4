"""``warmstart bench …``: benchmarks that print tables and write JSON."""

from __future__ import annotations

from pathlib import Path

import click


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
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the result as JSON to this file.")
def restore(
    size_mb: float, repeats: int, steady_runs: int, workdir: Path | None, threads: int | None,
    json_path: Path | None,
) -> None:
    """Restore latency: warmstart vs torch.load, safetensors and tensorizer, each in a fresh
    process, page-cached and from a cold file."""
    from warmstart.bench.report import print_tables, write_json
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
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Parent of the run's temporary directory (default: the system temp dir).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the result as JSON to this file.")
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
