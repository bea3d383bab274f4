"""CLI commands for workers: ``warmstart worker``, ``warmstart status``, ``warmstart infer``."""

from __future__ import annotations

import json
import socket
import sys
import time

import click


@click.command()
@click.option("--name", help="Worker name (default WARMSTART_WORKER_NAME, else warmstart-<host>-<pid>).")
@click.option("--concurrency", type=int, help="Task threads (default WARMSTART_WORKER_CONCURRENCY).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
def worker(ctx: click.Context, name: str | None, concurrency: int | None, loglevel: str) -> None:
    """Start a worker: threads pool, its own control queue, eager models warmed first.

    A worker that Celery stops on an "unrecoverable error" (kombu's Redis transport can fail
    that way while Redis restarts) starts again in the same process, under the same name;
    one asked to stop (SIGTERM, SIGINT, `warmstart drain`) exits.
    """
    import os

    from celery.signals import worker_shutting_down

    from warmstart.app import app
    from warmstart.cli import settings_from
    from warmstart.infra.celery_app import configure

    settings = settings_from(ctx)
    name = name or settings.worker_name or f"warmstart-{socket.gethostname()}-{os.getpid()}"
    settings = settings.model_copy(update={"worker_name": name})
    configure(app, settings)
    asked_to_stop: list[bool] = []
    worker_shutting_down.connect(lambda **_: asked_to_stop.append(True), weak=False)
    started = time.monotonic()
    try:
        app.worker_main(
            [
                "worker", "--pool", "threads",
                "--concurrency", str(concurrency or settings.worker_concurrency),
                "--hostname", f"{name}@%h", "--loglevel", loglevel,
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                *(["--task-events"] if settings.celery_task_events else []),  # for the Celery exporter
            ]
        )  # fmt: skip
    except SystemExit as e:
        # A message (a refused start) or an early exit is final: restarting would only loop.
        if asked_to_stop or isinstance(e.code, str) or time.monotonic() - started < 10.0:
            raise
    if not asked_to_stop:
        click.echo(f"warmstart worker {name} stopped without being asked to (unrecoverable error); "
                   "starting again in 1 s", err=True)  # fmt: skip
        time.sleep(1.0)
        os.execv(sys.executable, [sys.executable, "-m", "warmstart.cli", *_with_name(sys.argv[1:], name)])


def _with_name(args: list[str], name: str) -> list[str]:
    """The command line again, naming the worker explicitly (so a restart keeps its name)."""
    if "--name" in args or any(a.startswith("--name=") for a in args):
        return args
    return [*args, "--name", name]


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def collect_status(settings: object) -> dict[str, object]:
    """Workers (alive and dead) with their models, read from the registry in Redis."""
    from warmstart.infra.redis_client import connect
    from warmstart.workers.registry import WorkerRegistry

    registry = WorkerRegistry(connect(settings.redis_url))  # type: ignore[attr-defined]
    alive, dead = registry.workers()
    return {
        "workers": {
            name: {**info, "alive": True, "models": registry.models_of(name)} for name, info in alive.items()
        }
        | {name: {"alive": False, "models": registry.models_of(name)} for name in dead},
        "read_at": time.time(),
    }


def print_status(status: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    from warmstart.infra.errors import WorkerError

    table = Table(title="warmstart status")
    for column in ("worker", "model", "version", "tier", "health", "consuming", "size", "cold ms", "settled ms"):
        table.add_column(column, no_wrap=column in ("worker", "model", "version"))
    workers = status["workers"]
    if not isinstance(workers, dict):
        raise WorkerError("the status read from Redis has no 'workers' mapping; is this a warmstart Redis?")
    for name, info in sorted(workers.items()):
        label = name if info.get("alive") else f"{name} (dead)"
        models = info.get("models") or {}
        if not models:
            table.add_row(label, "-", "", "", "", "", "", "", "")
        for model, state in sorted(models.items()):
            cold, settled = state.get("cold_latency_ms"), state.get("settled_latency_ms")
            table.add_row(
                label, model, str(state.get("version")), state.get("tier"), state.get("health"),
                "yes" if state.get("consuming") else "no", _fmt_bytes(state.get("size_bytes")),
                f"{cold:.1f}" if cold is not None else "-", f"{settled:.1f}" if settled is not None else "-",
            )  # fmt: skip
            label = ""
    Console(width=max(Console().width, 120)).print(table)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Workers, their budgets, each model's tier, health and latencies, and rollouts in progress."""
    from warmstart.cli import settings_from

    from warmstart.infra.redis_client import connect
    from warmstart.scheduler.rollout import Rollouts

    settings = settings_from(ctx)
    result = collect_status(settings)
    rollouts = Rollouts(connect(settings.redis_url))
    result["rollouts"] = {m: r for m in rollouts.active() if (r := rollouts.get(m)) is not None}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    print_status(result)
    for model, record in sorted(result["rollouts"].items()):
        click.echo(f"rollout: {model} {record['previous']} -> {record['version']} [{record['phase']}]"
                   f"{' canary ' + record['canary'] if record.get('canary') else ''} (`warmstart rollout {model}`)")


@click.command()
@click.argument("model")
@click.option("--input", "input_json", required=True, help='Inputs as JSON: {"name": [[...]] or {"dtype","shape","data"}}; @FILE reads a file.')
@click.option("--timeout", "timeout_s", type=float, help="Seconds to wait (default WARMSTART_INFERENCE_TIMEOUT_S).")
@click.pass_context
def infer(ctx: click.Context, model: str, input_json: str, timeout_s: float | None) -> None:
    """Send one inference request and print the answer as JSON."""
    from warmstart.cli import settings_from
    from warmstart.infra.errors import InvalidInputError
    from warmstart.workers.client import Client

    text = open(input_json[1:]).read() if input_json.startswith("@") else input_json
    try:
        inputs = json.loads(text)
    except ValueError as e:
        raise InvalidInputError(f"--input is not valid JSON: {e}") from e
    if not isinstance(inputs, dict):
        raise InvalidInputError("--input must be a JSON object mapping input names to tensors")
    answer = Client(settings_from(ctx)).submit(model, inputs, timeout_s=timeout_s).raw()
    json.dump(answer, sys.stdout, indent=2)
    click.echo()


worker_commands = [worker, status, infer]
