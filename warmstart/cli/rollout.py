"""``warmstart deploy`` (start a rollout the beat drives), ``warmstart rollout`` (where it is),
``warmstart rollback`` (stop it, or move ``live`` back after it)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click


def _show(record: dict[str, Any]) -> str:
    steps = " → ".join(phase for phase, _ in record["history"])
    line = f"{record['model']}: {record['previous'] or 'nothing'} → {record['version']}  [{record['phase']}]  ({steps})"
    if record.get("canary"):
        line += f"\n  canary: {record['canary']}"
        if record.get("canary_serves_first"):
            line += " (chosen for its room: it made the serving version HOT too)"
    for worker, why in sorted((record.get("canary_skipped") or {}).items()):
        line += f"\n  {worker} sat the canary out: {why}"
    shadow = record.get("shadow")
    if shadow:
        new, old = shadow["staged"], shadow["serving"]
        line += (f"\n  shadow on {shadow['requests']} {shadow['source']}: errors {new['errors']} (serving {old['errors']}), "
                 f"non-finite {new['non_finite']}, p99 {new['p99_ms']} ms (serving {old['p99_ms']} ms), "
                 f"max |diff| {shadow['max_abs_diff']}")  # fmt: skip
    canary = record.get("canary_report")
    if canary:
        new = canary["versions"].get(record["version"], {})
        share = canary.get("observed_share")
        line += (f"\n  canary ({record['canary_share']:.0%} asked) on {', '.join(record['canary_workers'])}: "
                 f"{share if share is None else f'{share:.1%}'} answered by {record['version']}, "
                 f"errors {new.get('errors')}, non-finite {new.get('non_finite')}, p99 {new.get('p99_ms')} ms")  # fmt: skip
    if record.get("reason"):
        line += f"\n  reason: {record['reason']}"
    return line


@click.command()
@click.argument("model")
@click.option("--version", "version", required=True, help="The published version to roll out.")
@click.option("--latency-bound", type=float, default=1.5, show_default=True,
              help="Roll back when the new version's p50 or p99 on replayed requests exceeds this × the serving one's.")
@click.option("--compatible", is_flag=True, help="Outputs must agree with the serving version's (within --atol).")
@click.option("--atol", type=float, default=1e-4, show_default=True)
@click.option("--canary-share", type=float, default=0.1, show_default=True,
              help="The share of live requests the new version answers during the bake (0: no canary step).")
@click.option("--bake-s", type=float, default=60.0, show_default=True, help="How long the canary runs.")
@click.option("--timeout-s", type=float, default=300.0, show_default=True, help="The most one step may take.")
@click.option("--wait", is_flag=True, help="Follow it until it ends; exit 2 when it is rolled back.")
@click.pass_context
def deploy(ctx: click.Context, model: str, version: str, latency_bound: float, compatible: bool, atol: float,
           canary_share: float, bake_s: float, timeout_s: float, wait: bool) -> None:  # fmt: skip
    """Roll VERSION of MODEL out: a canary worker loads it beside the serving version and checks
    it (golden outputs), replays recent real requests through both (errors, non-finite outputs,
    latency, agreement), then answers --canary-share of live requests with it on every serving
    worker for --bake-s (errors, non-finite answers and latency watched), then every serving
    worker switches with no cold start. Any failed check rolls it back. A running `warmstart
    beat` drives it."""
    from warmstart.cli import settings_from
    from warmstart.infra.redis_client import connect
    from warmstart.scheduler.rollout import Rollouts, ShadowLimits, start_rollout
    from warmstart.snapshot.stores import open_store

    settings = settings_from(ctx)
    rollouts = Rollouts(connect(settings.redis_url))
    limits = ShadowLimits(latency_bound=latency_bound, compatible=compatible, atol=atol)
    record = start_rollout(open_store(settings), rollouts, model, version, limits, timeout_s, canary_share, bake_s)
    steps = "warm → shadow → canary → promote" if record["canary_share"] else "warm → shadow → promote"
    click.echo(f"rollout {record['id']} of {model} to {version} started ({steps}); "
               f"`warmstart rollout {model}` follows it")  # fmt: skip
    if not wait:
        return
    seen = None
    while True:
        record = rollouts.get(model) or record
        if record["phase"] != seen:
            seen = record["phase"]
            click.echo(_show(record))
        if record["phase"] in ("done", "rolled_back"):
            sys.exit(0 if record["phase"] == "done" else 2)
        time.sleep(0.5)


@click.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rollout(ctx: click.Context, model: str, as_json: bool) -> None:
    """Show MODEL's latest rollout: its phase, its checks, and why it ended."""
    from warmstart.cli import settings_from
    from warmstart.infra.errors import RolloutError
    from warmstart.infra.redis_client import connect
    from warmstart.scheduler.rollout import Rollouts

    record = Rollouts(connect(settings_from(ctx).redis_url)).get(model)
    if record is None:
        raise RolloutError(f"{model!r} has no rollout on record; start one with `warmstart deploy {model} --version V`")
    click.echo(json.dumps(record, indent=2) if as_json else _show(record))


@click.command()
@click.argument("model")
@click.option("--timeout-s", type=float, default=300.0, show_default=True)
@click.pass_context
def rollback(ctx: click.Context, model: str, timeout_s: float) -> None:
    """Stop MODEL's rollout in progress (the staged version is discarded; the serving one never
    stopped), or, after one ended with the new version live, move `live` back to the previous
    version (staged and checked first, with no cold start)."""
    from warmstart.cli import settings_from
    from warmstart.infra.errors import RolloutError
    from warmstart.infra.redis_client import connect
    from warmstart.scheduler.alias import AliasMover
    from warmstart.scheduler.rollout import Rollouts

    settings = settings_from(ctx)
    rollouts = Rollouts(connect(settings.redis_url))
    record = rollouts.cancel(model, "warmstart rollback")
    if record is not None and record["phase"] not in ("done", "rolled_back"):
        click.echo(f"{model}: rollback of {record['version']} requested; the beat discards it at its next tick")
        return
    if record is None or record["phase"] != "done" or not record.get("previous"):
        why = "no rollout on record" if record is None else (
            "its last rollout did not go live" if record["phase"] != "done" else "it had no version before")
        raise RolloutError(f"{model!r} has no previous version to roll back to ({why}); move an alias by hand "
                           f"with `warmstart alias {model} live VERSION`")  # fmt: skip
    mover = AliasMover(settings)
    try:
        moved = mover.move(model, "live", record["previous"], timeout_s=timeout_s)
    finally:
        mover.app.close()
    click.echo(f"{model}: live → {moved.version} (was {moved.previous}), {len(moved.switched)} worker(s) switched")


rollout_commands = [deploy, rollout, rollback]
