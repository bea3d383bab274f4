"""CLI commands for snapshots: ``publish``, ``ls``, ``inspect``, ``fetch``, ``compile-cache push``.

Each command parses its arguments, calls one library function, and prints the result (as
JSON with ``--json``). Typed errors are printed as one line by the group in :mod:`warmstart.infra.cli`.
Heavy imports (torch) happen inside the commands, so ``warmstart --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _store_and_settings(ctx: click.Context) -> tuple[Any, Any]:
    from warmstart.cli import settings_from
    from warmstart.snapshot.stores import open_store

    settings = settings_from(ctx)
    return open_store(settings), settings


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _json_arg(value: str, option: str) -> Any:
    try:
        return json.loads(value)
    except ValueError as e:
        raise click.BadParameter(f"not valid JSON: {e}", param_hint=option) from e


@click.command("publish")
@click.argument("model", required=False)
@click.option("--example", "examples", multiple=True, help="Publish this example model (repeatable).")
@click.option("--all-examples", is_flag=True, help="Publish every example model.")
@click.option("--version", "version", default=None, help="Version to publish (examples: v1).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A safetensors file to publish as is.")  # fmt: skip
@click.option("--hf-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A Hugging Face folder (config.json + model.safetensors, or sharded: "
                   "model.safetensors.index.json + its shards) to publish unchanged.")  # fmt: skip
@click.option("--outputs", "outputs_csv", default=None,
              help="The outputs the model answers with, comma-separated (e.g. last_hidden_state).")  # fmt: skip
@click.option("--factory", help="Registered architecture, package.module:function.")
@click.option("--kwargs", "kwargs_json", default="{}", show_default=True, help="Factory kwargs, JSON.")
@click.option("--inputs", "inputs_json",
              help='Inputs, JSON: [{"name": "x", "dtype": "float32", "shape": ["batch", 8]}].')  # fmt: skip
@click.option("--golden-inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A safetensors file of golden inputs (tensors named like the inputs).")  # fmt: skip
@click.option("--rtol", type=float, default=1e-4, show_default=True)
@click.option("--atol", type=float, default=1e-5, show_default=True)
@click.option("--compile", "compile_backend", type=click.Choice(["inductor", "aot_eager", "eager"]), default=None,
              help="Workers run the model through torch.compile with this backend before its warm-up "
                   "(docs/compile.md). MODEL only.")  # fmt: skip
@click.option("--compile-mode", default="default", show_default=True,
              help="torch.compile's mode (inductor): default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs.")
@click.option("--no-live", is_flag=True, help="Do not point the 'live' alias at a first version.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifests as JSON.")
@click.pass_context
def publish(
    ctx: click.Context,
    model: str | None,
    examples: tuple[str, ...],
    all_examples: bool,
    version: str | None,
    weights: Path | None,
    hf_dir: Path | None,
    outputs_csv: str | None,
    factory: str | None,
    kwargs_json: str,
    inputs_json: str | None,
    golden_inputs: Path | None,
    rtol: float,
    atol: float,
    compile_backend: str | None,
    compile_mode: str,
    no_live: bool,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Publish example models, MODEL from a Hugging Face folder, or MODEL from a safetensors
    file, as immutable snapshots."""
    from warmstart.snapshot import publish as publishing

    store, settings = _store_and_settings(ctx)
    common: dict[str, Any] = {
        "rtol": rtol, "atol": atol, "show_progress": progress, "set_live": not no_live,
        "allowed_architectures": tuple(settings.allowed_architectures),
    }  # fmt: skip
    if compile_backend is not None:
        if examples or all_examples:
            raise click.UsageError("--compile applies to MODEL (--weights or --hf-dir), not to --example")
        common["compile_spec"] = {"backend": compile_backend, "mode": compile_mode}
    outputs = [n.strip() for n in outputs_csv.split(",") if n.strip()] if outputs_csv is not None else None
    if outputs is not None and not outputs:
        raise click.BadParameter("name at least one output", param_hint="--outputs")
    if hf_dir is not None:
        if examples or all_examples or weights or factory or inputs_json or not model:
            raise click.UsageError("--hf-dir takes MODEL and no --example, --weights, --factory or --inputs")
        from warmstart.snapshot.golden import read_input_file
        from warmstart.snapshot.hf import publish_hf_folder

        golden = read_input_file(golden_inputs) if golden_inputs else None
        manifests = [
            publish_hf_folder(store, model, version or "v1", hf_dir, outputs=outputs, golden_inputs=golden, **common)
        ]
    elif examples or all_examples:
        if model or weights or factory or inputs_json or golden_inputs:
            raise click.UsageError("--example/--all-examples take no MODEL, --weights, --factory or --inputs")
        manifests = publishing.publish_examples(
            store, None if all_examples else list(examples), version or "v1", **common
        )
    else:
        if not (model and version and weights and factory and inputs_json):
            raise click.UsageError(
                "publish needs --example NAME, --all-examples, MODEL --hf-dir DIR, or MODEL --version V "
                "--weights FILE --factory pkg.mod:fn --inputs JSON"
            )
        from warmstart.snapshot.golden import read_input_file

        architecture = {"factory": factory, "kwargs": _json_arg(kwargs_json, "--kwargs")}
        golden = read_input_file(golden_inputs) if golden_inputs else None
        manifests = [
            publishing.publish_file(
                store, model, version, weights, architecture, _json_arg(inputs_json, "--inputs"),
                golden, outputs=outputs, **common,
            )
        ]  # fmt: skip
    if as_json:
        click.echo(json.dumps([m.to_dict() for m in manifests], indent=2))
        return
    for m in manifests:
        click.echo(
            f"published {m.model}/{m.version}  {_human_bytes(m.weights.size_bytes)}  "
            f"sha256 {m.weights.sha256[:12]}  to {store.describe()}"
        )


@click.command("ls")
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def ls(ctx: click.Context, model: str | None, as_json: bool) -> None:
    """List models, or MODEL's versions, with sizes and aliases."""
    from warmstart.snapshot.catalog import summarize

    store, _ = _store_and_settings(ctx)
    summary = summarize(store, model)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    if not summary:
        click.echo(f"no models in {store.describe()}")
    for entry in summary:
        aliases = ", ".join(f"{a}→{v}" for a, v in sorted(entry["aliases"].items())) or "no aliases"
        click.echo(f"{entry['model']}  ({aliases})")
        for row in entry["versions"]:
            marks = [a for a, v in entry["aliases"].items() if v == row["version"]]
            click.echo(
                f"  {row['version']:<12} {_human_bytes(row['size_bytes']):>10}  {row['created_at']}  "
                f"{row['architecture']}{'  [' + ', '.join(sorted(marks)) + ']' if marks else ''}"
            )


@click.command("inspect")
@click.argument("model")
@click.argument("ref", required=False, default="live")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON only.")
@click.pass_context
def inspect(ctx: click.Context, model: str, ref: str, as_json: bool) -> None:
    """Show the manifest of MODEL's version REF (a version or an alias; default: live)."""
    from warmstart.snapshot.catalog import read_resolved

    store, _ = _store_and_settings(ctx)
    manifest = read_resolved(store, model, ref)
    if as_json:
        click.echo(manifest.to_json().decode(), nl=False)
        return
    from rich.console import Console
    from rich.syntax import Syntax

    if ref != manifest.version:
        click.echo(f"{model} {ref} → {manifest.version}")
    Console().print(Syntax(manifest.to_json().decode(), "json", theme="ansi_dark", word_wrap=True))


@click.command("fetch")
@click.argument("model")
@click.argument("ref", required=False, default="live")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def fetch(ctx: click.Context, model: str, ref: str, progress: bool | None, as_json: bool) -> None:
    """Fetch MODEL's version REF (default: live) into the local cache, verified."""
    from warmstart.snapshot.cache import SnapshotCache, fetch_version

    store, settings = _store_and_settings(ctx)
    local = fetch_version(store, SnapshotCache.from_settings(settings), model, ref, show_progress=progress)
    result = {
        "model": local.manifest.model,
        "version": local.manifest.version,
        "path": str(local.directory),
        "weights_path": str(local.weights_path),
        "size_bytes": local.manifest.weights.size_bytes,
        "downloaded_bytes": local.downloaded_bytes,
        "cached": local.downloaded_bytes == 0,
        "elapsed_s": round(local.elapsed_s, 4),
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    how = "already cached" if result["cached"] else f"downloaded {_human_bytes(local.downloaded_bytes)}"
    rate = (
        f", {local.downloaded_bytes / local.elapsed_s / 2**20:.0f} MiB/s"
        if local.downloaded_bytes and local.elapsed_s > 0
        else ""
    )
    click.echo(f"{result['model']}/{result['version']}: {how} in {local.elapsed_s:.3f}s{rate}")
    click.echo(result["path"])


@click.group("compile-cache")
def compile_cache() -> None:
    """Compile artifacts shared through the store, signed (docs/compile.md)."""


@compile_cache.command("push")
@click.argument("model")
@click.argument("ref", required=False, default="live")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def compile_cache_push(ctx: click.Context, model: str, ref: str, as_json: bool) -> None:
    """Compile MODEL's version REF (default: live) here, from scratch, and push what was
    compiled to the store, signed with WARMSTART_SIGNING_KEY, for workers of this platform."""
    from warmstart.cli import settings_from
    from warmstart.workers.compiling import push_compiled

    result = push_compiled(settings_from(ctx), model, ref)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"pushed {result['key']} ({_human_bytes(result['size_bytes'])}, compiled in {result['compile_s']:.1f} s), "
               f"signed, for {result['platform']}")  # fmt: skip


snapshot_commands: list[click.Command] = [publish, ls, inspect, fetch, compile_cache]
