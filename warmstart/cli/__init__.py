"""The ``warmstart`` command line: parse, then call one library function.

Each subsystem keeps its commands in its own module; this file only assembles the group.
Settings are built once here (from ``WARMSTART_*``) and handed down through the click context.
"""

from __future__ import annotations

import sys

import click

from warmstart.infra.errors import WarmstartError
from warmstart.infra.settings import Settings, load_settings


class _Group(click.Group):
    """Turns warmstart's typed errors into one clear line and exit status 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except WarmstartError as e:
            click.echo(f"error ({type(e).__name__}): {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="warmstart")
@click.pass_context
def main(ctx: click.Context) -> None:
    """warmstart: PyTorch model serving behind Celery, without cold starts."""
    ctx.ensure_object(dict)
    from warmstart.infra.parent import watch_parent_from_env

    watch_parent_from_env()  # a worker or beat started from Python ends with its starter


def settings_from(ctx: click.Context) -> Settings:
    """The settings of this invocation, built once from the environment."""
    root = ctx.find_root()
    root.ensure_object(dict)
    if "settings" not in root.obj:
        root.obj["settings"] = load_settings()
    return root.obj["settings"]


def _register() -> None:
    # Imported here, not at module top, so that `warmstart --help` stays fast and a
    # subsystem's heavy imports (torch) happen only when its command runs.
    from warmstart.bench.cli import bench
    from warmstart.cli.autoscale import autoscale_commands
    from warmstart.cli.rollout import rollout_commands
    from warmstart.cli.scheduler import scheduler_commands
    from warmstart.cli.services import services_commands
    from warmstart.cli.snapshot import snapshot_commands
    from warmstart.cli.workers import worker_commands

    for command in snapshot_commands + worker_commands + scheduler_commands + services_commands + autoscale_commands + rollout_commands:
        main.add_command(command)
    main.add_command(bench)


_register()

