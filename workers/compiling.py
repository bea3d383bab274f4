"""The compile step of a model published with ``compile``: before its warm-up, the worker
wraps the restored module in ``torch.compile`` and runs it on its golden inputs, which
compiles it (allowed ``WARMSTART_COMPILE_TIMEOUT_S``): with the dynamic dimensions marked
dynamic (the batch dimension unbacked), then at other batch sizes (:func:`compile_inputs`),
so that no request's shape compiles at request time. The warm-up and the golden health
check then run the compiled module, so a model is HOT only once its compiled code answers
like the published one.

Where compiled code comes from, fastest first:

- the **per-host cache**: inductor's cache directory, set to ``<cache_dir>/compile`` when
  ``TORCHINDUCTOR_CACHE_DIR`` is not set. Only this host writes it; always used.
- a **signed artifact** in the store (:mod:`warmstart.snapshot.compiled`), loaded into the
  per-host cache before compiling, only when the worker holds ``WARMSTART_SIGNING_KEY`` and
  the signature checks. A refused artifact is logged and reported; the model compiles from
  scratch, nothing else is harmed.

What happened is reported in the slot's state (``compile``): backend, mode, where the code
came from, seconds, and the per-host cache's hits and misses during the step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from warmstart.infra.errors import CompileArtifactError, ManifestError, ModelExecutionError, SettingsError, StoreError
from warmstart.infra.settings import Settings
from warmstart.snapshot.compiled import fetch_artifact, has_artifact, platform_key
from warmstart.snapshot.manifest import Manifest
from warmstart.snapshot.stores.base import SnapshotStore
from warmstart.workers.warmup import DeadlineExceeded, run_with_deadline

log = logging.getLogger(__name__)
_env_lock = threading.Lock()
#: The cache directory the environment chose when this process started. Read at import:
#: torch writes its default (``/tmp/torchinductor_<user>``) into the environment the first
#: time it needs one, which must not count as a choice.
_CHOSEN_AT_START = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or None


def use_host_cache(cache_dir: Path) -> Path:
    """Point inductor's cache at ``<cache_dir>/compile`` unless the environment chose one when
    the process started (torch reads it at each compile)."""
    with _env_lock:
        chosen = _CHOSEN_AT_START or str((cache_dir / "compile").resolve())
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = chosen
    Path(chosen).mkdir(parents=True, exist_ok=True)
    return Path(chosen)


def is_compiled(module: torch.nn.Module) -> bool:
    return hasattr(module, "_orig_mod")  # torch._dynamo's OptimizedModule


def _cache_counters() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["fxgraph_cache_hit"]), int(counters["inductor"]["fxgraph_cache_miss"])


def compile_model(module: torch.nn.Module, manifest: Manifest, golden_inputs: Mapping[str, torch.Tensor], *,
                  cache_dir: Path, device: str, timeout_s: float, store: SnapshotStore | None = None,
                  signing_key: bytes | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:  # fmt: skip
    """Compile ``module`` as its manifest asks and run it on :func:`compile_inputs`.

    Returns:
        The compiled module, and the report for the slot's state.

    Raises:
        ModelExecutionError: compiling or the first compiled forward failed, or it did not end
            within ``timeout_s`` (the model is not made HOT; its cause is named).
    """
    spec = manifest.compile
    report: dict[str, Any] = {"backend": spec["backend"], "mode": spec["mode"], "source": "compiled here"}
    t0 = time.perf_counter()
    if spec["backend"] == "inductor":
        report["host_cache"] = str(use_host_cache(cache_dir))
        report["platform"] = platform = platform_key(device)
        if store is not None:
            report.update(_load_from_store(store, manifest, platform, signing_key))
    hits0, misses0 = _cache_counters()
    options: dict[str, Any] = {"backend": spec["backend"]}
    if spec["backend"] == "inductor" and spec["mode"] != "default":
        options["mode"] = spec["mode"]
    deadline = time.monotonic() + timeout_s

    def run_all(unbacked: bool) -> torch.nn.Module:
        compiled = torch.compile(module, **options)
        runs, report["shapes"] = compile_inputs(manifest, golden_inputs, unbacked_batch=unbacked)
        for inputs in runs:
            run_with_deadline(compiled, inputs, max(deadline - time.monotonic(), 0.001))
        return compiled

    try:
        try:
            compiled = run_all(unbacked=True)
        except DeadlineExceeded:
            raise
        except Exception as e:  # the model needs its batch size known: specialise it instead
            if report.get("shapes") != UNBACKED:
                raise
            log.info("%s %s does not compile with an unbacked batch dimension (%s: %s); compiling "
                     "size 1 and the other sizes apart", manifest.model, manifest.version, type(e).__name__, str(e)[:200])
            compiled = run_all(unbacked=False)
    except DeadlineExceeded as e:
        raise ModelExecutionError(
            f"compiling {manifest.model!r} {manifest.version} did not finish within {timeout_s:.0f} s "
            "(WARMSTART_COMPILE_TIMEOUT_S); raise it, or push a signed compile artifact (`warmstart compile-cache push`)"
        ) from e
    except Exception as e:  # dynamo and inductor raise many types: one typed answer
        raise ModelExecutionError(
            f"torch.compile of {manifest.model!r} {manifest.version} (backend {spec['backend']}) failed: "
            f"{type(e).__name__}: {str(e)[:500]}; republish without --compile, or with another backend"
        ) from e
    hits, misses = _cache_counters()
    report.update(seconds=round(time.perf_counter() - t0, 3), cache_hits=hits - hits0, cache_misses=misses - misses0)
    if report["source"] == "compiled here" and report["cache_hits"] and not report["cache_misses"]:
        report["source"] = "host cache"
    return compiled, report


#: How the compile step shaped its inputs (``compile.shapes`` in the slot's state).
UNBACKED = "one graph: dynamic dimensions, the batch unbacked"
DYNAMIC = "dynamic dimensions, batch size 1 apart"
STATIC = "the golden shape only (no dynamic dimension)"


def compile_inputs(manifest: Manifest, golden_inputs: Mapping[str, torch.Tensor], *,
                   unbacked_batch: bool = True) -> tuple[list[dict[str, torch.Tensor]], str]:
    """The inputs the compile step runs, so that no request shape compiles later, at request
    time (seconds with inductor, while the model is already HOT), and which way they were
    shaped (``UNBACKED``, ``DYNAMIC`` or ``STATIC``):

    1. the golden inputs with every dynamic dimension (a name in the manifest's shape) at
       least 2 long (a 1 is repeated to 2, within ``dim_max``) and marked dynamic. When
       dimension 0 of every input is dynamic (the batch) and ``unbacked_batch``, it is marked
       *unbacked*: torch then makes no assumption about its size, not even about 0 and 1,
       which it otherwise compiles apart, so one graph serves every batch size;
    2. then, when dimension 0 is the batch, probes at batch size 1 and at one row more than
       the first run (within ``dim_max``): whatever torch still compiles for another size (a
       model whose code branches on its batch size; size 1 when the batch is not unbacked)
       is compiled here.

    A model without dynamic dimensions runs its golden inputs as they are.
    """
    from torch._dynamo.decorators import mark_unbacked

    specs = {spec.name: spec for spec in manifest.inputs}
    wide: dict[str, torch.Tensor] = {}
    dynamic_dims: dict[str, list[int]] = {}
    batch_max: int | None = None
    for name, tensor in golden_inputs.items():
        tensor = tensor.detach()  # a new tensor object: the golden one is not marked
        spec = specs.get(name)
        dims = [] if spec is None else [i for i, d in enumerate(spec.shape) if isinstance(d, str) and i < tensor.dim()]
        for dim in dims:
            limit = spec.dim_max.get(str(spec.shape[dim]))  # type: ignore[union-attr]  # dims exist only with a spec
            if dim == 0 and limit is not None:
                batch_max = limit if batch_max is None else min(batch_max, limit)
            if tensor.shape[dim] == 1 and (limit is None or limit >= 2):
                tensor = torch.cat([tensor, tensor], dim=dim)
        wide[name], dynamic_dims[name] = tensor, [d for d in dims if tensor.shape[d] >= 2]
    if not any(dynamic_dims.values()):
        return [dict(golden_inputs)], STATIC
    batched = all(0 in dims for dims in dynamic_dims.values())
    unbacked = batched and unbacked_batch
    for name, dims in dynamic_dims.items():
        for dim in dims:
            if dim == 0 and unbacked:
                mark_unbacked(wide[name], 0)
            else:
                torch._dynamo.maybe_mark_dynamic(wide[name], dim)
    runs = [wide]
    if batched:
        runs.append({name: tensor.narrow(0, 0, 1) for name, tensor in golden_inputs.items()})
        rows = next(iter(wide.values())).shape[0]
        if batch_max is None or rows + 1 <= batch_max:
            runs.append({name: torch.cat([tensor, tensor.narrow(0, 0, 1)]) for name, tensor in wide.items()})
    return runs, UNBACKED if unbacked else DYNAMIC


def _load_from_store(store: SnapshotStore, manifest: Manifest, platform: str, key: bytes | None) -> dict[str, Any]:
    """Load the signed artifact of this model for this platform into the per-host cache."""
    try:
        if key is None:
            if has_artifact(store, manifest.model, manifest.version, platform):
                return {"store_artifact": "ignored: this worker holds no WARMSTART_SIGNING_KEY"}
            return {}
        data = fetch_artifact(store, key, manifest.model, manifest.version, platform)
    except CompileArtifactError as e:
        log.warning("refused the compile artifact of %s %s: %s", manifest.model, manifest.version, e)
        return {"store_artifact": f"refused: {e}"}
    except StoreError as e:
        log.warning("could not read the compile artifact of %s %s: %s", manifest.model, manifest.version, e)
        return {"store_artifact": f"unreadable: {e}"}
    if data is None:
        return {}
    try:
        info = torch.compiler.load_cache_artifacts(data)
    except Exception as e:  # signed, but torch cannot read it (another build of torch): compile here
        log.warning("could not load the signed compile artifact of %s %s: %s", manifest.model, manifest.version, e)
        return {"store_artifact": f"unloadable: {type(e).__name__}: {str(e)[:200]}"}
    loaded = sum(len(v) for v in info.artifacts.values()) if info is not None else 0
    if not loaded:  # torch read nothing from it (it does not always raise): compile here
        log.warning("the signed compile artifact of %s %s held nothing torch could load", manifest.model, manifest.version)
        return {"store_artifact": f"unloadable: torch found no compiled entries in its {len(data)} bytes"}
    return {"source": "signed artifact", "store_artifact": f"loaded ({len(data)} bytes, {loaded} entries)"}


def save_artifact() -> bytes | None:
    """What this process compiled so far, as torch saves it (None: nothing)."""
    saved = torch.compiler.save_cache_artifacts()
    return None if saved is None else saved[0]


def push_compiled(settings: Settings, model: str, ref: str = "live") -> dict[str, Any]:
    """Compile ``model``'s version ``ref`` here (in a fresh compile cache, so that the artifact
    holds every piece) and push the signed artifact for this platform
    (``warmstart compile-cache push``).

    Raises:
        SettingsError: no ``WARMSTART_SIGNING_KEY``.
        ManifestError: the version was not published with ``compile`` (backend inductor).
        ModelExecutionError: compiling failed.
        SnapshotError, StoreError: fetching the snapshot or pushing failed.
    """
    import tempfile

    from warmstart.snapshot.cache import SnapshotCache, fetch_version
    from warmstart.snapshot.compiled import push_artifact
    from warmstart.snapshot.golden import load_golden
    from warmstart.snapshot.process import resolve_device
    from warmstart.snapshot.restore import restore_model
    from warmstart.snapshot.stores import open_store

    if settings.signing_key is None:
        raise SettingsError("set WARMSTART_SIGNING_KEY (the key the workers hold) to push a compile artifact: "
                            "workers load only artifacts signed with it")  # fmt: skip
    store = open_store(settings)
    local = fetch_version(store, SnapshotCache.from_settings(settings), model, ref)
    manifest = local.manifest
    if manifest.compile.get("backend") != "inductor":
        raise ManifestError(
            f"{model} {manifest.version} was not published with --compile inductor (compile: {manifest.compile or 'none'}): "
            "there is no generated code to share; republish it with --compile inductor"
        )
    device = str(resolve_device(settings.device))
    module = restore_model(local.weights_path, manifest, device=device, allowed_architectures=settings.allowed_architectures)
    golden_in, _ = load_golden(local.directory / manifest.golden.file, manifest.golden)
    golden_in = {k: v.to(device) for k, v in golden_in.items()}
    with tempfile.TemporaryDirectory(prefix="warmstart-compile-") as fresh:
        previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh  # every piece compiled here, none from a cache
        try:
            _, report = compile_model(module, manifest, golden_in, cache_dir=Path(fresh), device=device,
                                      timeout_s=settings.compile_timeout_s)  # fmt: skip
            data = save_artifact()
        finally:
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
    if not data:
        raise ModelExecutionError(f"compiling {model} {manifest.version} left nothing to save; nothing was pushed")
    platform = platform_key(device)
    key = push_artifact(store, settings.signing_key.get_secret_value().encode(), model, manifest.version, platform, data)
    return {"model": model, "version": manifest.version, "platform": platform, "key": key, "size_bytes": len(data),
            "compile_s": report["seconds"]}  # fmt: skip
