"""``warmstart drain`` (hand a worker's HOT models over before it stops: a Kubernetes preStop) and
``warmstart autoscale`` (local worker processes following ``desired_workers``)."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--name", help="The worker (default WARMSTART_WORKER_NAME).")
@click.option("--timeout-s", type=float, default=120.0, show_default=True, help="Give up after this long.")
@click.pass_context
def drain(ctx: click.Context, name: str | None, timeout_s: float) -> None:
    """Hand this worker's HOT models over: the beat places them on other workers, and this
    returns once each is HOT elsewhere (exit 1 when some are not, in time). Then stop the
    worker (SIGTERM) as usual: it finishes what it runs and leaves the registry."""
    from warmstart.cli import settings_from
    from warmstart.infra.redis_client import connect
    from warmstart.workers.handover import hand_over
    from warmstart.workers.registry import WorkerRegistry

    settings = settings_from(ctx)
    worker = name or settings.worker_name
    if not worker:
        raise click.UsageError("name the worker: --name or WARMSTART_WORKER_NAME")
    client = connect(settings.redis_url)
    pending = hand_over(WorkerRegistry(client), worker, timeout_s)
    if pending:
        click.echo(f"{worker}: not handed over within {timeout_s:.0f} s (or no other worker): {', '.join(pending)}", err=True)
        sys.exit(1)
    click.echo(f"{worker}: every HOT model is HOT on another worker")


@click.command()
@click.option("--min", "min_workers", type=int, required=True, help="Never fewer workers than this.")
@click.option("--max", "max_workers", type=int, required=True, help="Never more workers than this.")
@click.option("--interval-s", type=float, default=1.0, show_default=True, help="How often to follow the signal.")
@click.option("--prefix", default="auto", show_default=True, help="Worker names: PREFIX-1, PREFIX-2, ...")
@click.option("--drain-timeout-s", type=float, default=60.0, show_default=True)
@click.pass_context
def autoscale(ctx: click.Context, min_workers: int, max_workers: int, interval_s: float, prefix: str,
              drain_timeout_s: float) -> None:
    """Run local worker processes following the beat's desired_workers (a development tool;
    on Kubernetes, KEDA follows the same signal). Workers inherit this environment."""
    import logging
    import signal

    from warmstart.autoscale import LocalScaler
    from warmstart.cli import settings_from

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from(ctx)
    scaler = LocalScaler(settings.redis_url, min_workers, max_workers, {}, prefix=prefix, drain_timeout_s=drain_timeout_s)
    signal.signal(signal.SIGTERM, lambda *_: scaler.stop())
    try:
        scaler.run(interval_s)
    except KeyboardInterrupt:
        scaler.stop()


autoscale_commands = [drain, autoscale]
