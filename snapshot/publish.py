"""Publishing a model version as an immutable snapshot.

Steps, in this order so that an interrupted publish leaves no visible version:

1. check the architecture is registered (a manifest may only name registered factories);
2. write ``model.safetensors`` (``safetensors.torch.save_model``: tied weights stored once),
   hash it (sha256, streamed) and read its header for the tensor index;
3. refuse to change an existing version (:class:`VersionExistsError`), or return it as is
   when the bytes are the same;
4. run the golden inputs in eval mode under ``torch.inference_mode()`` (twice: a model that
   does not answer the same both times would fail every health check) and write
   ``golden.safetensors``;
5. validate the manifest, upload the weights and golden files, and write ``manifest.json``
   LAST; then set the ``live`` alias if the model has none yet.

:func:`publish_file` also takes a list of shard files (a sharded Hugging Face checkpoint):
each is published unchanged under its own name, and the manifest (format version 2) lists
each with its size, sha256 and tensors.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model

from warmstart.infra.errors import ManifestError, SnapshotError, SnapshotNotFoundError, VersionExistsError
from warmstart.snapshot import catalog
from warmstart.infra.progress import transfer_progress
from warmstart.snapshot.golden import compare_outputs, make_golden_inputs, ungeneratable_inputs, write_golden
from warmstart.snapshot.outputs import select_outputs
from warmstart.snapshot.header import read_header_file
from warmstart.snapshot.manifest import (
    MAX_INPUTS,
    MAX_OUTPUTS,
    MAX_SHARDS,
    ArchitectureSpec,
    GoldenInfo,
    InputSpec,
    Manifest,
    WeightsFile,
    WeightsInfo,
    parse_batching,
    parse_compile,
    parse_input_spec,
    parse_manifest,
    shard_file_problem,
)
from warmstart.snapshot.names import GOLDEN_FILE, MANIFEST_FILE, WEIGHTS_FILE, validate_name, version_key
from warmstart.snapshot.registry import check_allowed
from warmstart.snapshot.stores.base import SnapshotStore

HASH_CHUNK_BYTES = 8 * 1024 * 1024

ArchitectureLike = ArchitectureSpec | str | Mapping[str, Any]
InputsLike = Sequence[InputSpec | Mapping[str, Any]]


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks (never whole into memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def as_architecture(architecture: ArchitectureLike) -> ArchitectureSpec:
    """An :class:`ArchitectureSpec` from a spec, ``"pkg.mod:fn"``, or ``{"factory", "kwargs"}``.

    Raises:
        ManifestError: none of those shapes.
    """
    if isinstance(architecture, ArchitectureSpec):
        return architecture
    if isinstance(architecture, str):
        return ArchitectureSpec(architecture, {})
    if isinstance(architecture, Mapping) and isinstance(architecture.get("factory"), str):
        kwargs = architecture.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise ManifestError("architecture 'kwargs' must be an object")
        return ArchitectureSpec(architecture["factory"], dict(kwargs))
    raise ManifestError(
        f"architecture {architecture!r} must be 'package.module:function' or "
        "{'factory': ..., 'kwargs': {...}}"
    )


def as_input_specs(inputs: InputsLike) -> tuple[InputSpec, ...]:
    """Input specs from specs or ``{"name", "dtype", "shape"}`` objects (as in the manifest,
    optionally with ``value_range`` and ``dim_max``), each checked as :func:`parse_manifest`
    checks it.

    Raises:
        ManifestError: empty, too many, or an entry that is malformed: an unknown key, a bad
            name, dtype or shape, or limits that do not fit it (see
            :func:`~warmstart.snapshot.manifest.parse_input_spec`).
    """
    if isinstance(inputs, (str, bytes, Mapping)) or not isinstance(inputs, Sequence):
        raise ManifestError("inputs must be a list of input specs")
    if len(inputs) > MAX_INPUTS:
        raise ManifestError(f"a model may declare at most {MAX_INPUTS} inputs, got {len(inputs)}")
    specs = []
    for i, raw in enumerate(inputs):
        if isinstance(raw, InputSpec):
            raw = raw.to_dict()  # checked like any other: a spec object is not trusted either
        elif not isinstance(raw, Mapping) or not {"name", "dtype", "shape"} <= set(raw):
            raise ManifestError(f"inputs[{i}] must be an object with 'name', 'dtype' and 'shape'")
        specs.append(parse_input_spec(_plain_json(raw), f"inputs[{i}]"))
    if not specs:
        raise ManifestError("a model must declare at least one input")
    if len({s.name for s in specs}) != len(specs):
        raise ManifestError("inputs name an input twice")
    return tuple(specs)


def _plain_json(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A spec as the manifest holds it: tuples (Python callers' ``(0, 10)``) become lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in raw.items()}


def _check_output_names(outputs: Sequence[str] | None) -> tuple[str, ...]:
    """``--outputs`` as a tuple of distinct, non-empty names (empty: answer with everything)."""
    if outputs is None:
        return ()
    if isinstance(outputs, (str, bytes)) or not all(isinstance(n, str) and n for n in outputs):
        raise ManifestError(f"outputs must be a list of output names, got {outputs!r} (--outputs a,b)")
    if len(outputs) > MAX_OUTPUTS or len(set(outputs)) != len(outputs):
        raise ManifestError(f"outputs must name each output once and at most {MAX_OUTPUTS}, got {len(outputs)}")
    return tuple(outputs)


# --- publishing ---------------------------------------------------------------------------


def _existing(store: SnapshotStore, model: str, version: str, sha256: str) -> Manifest | None:
    """The published manifest when this version exists with the same bytes; None if absent.

    Raises:
        VersionExistsError: it exists with other bytes.
    """
    if not store.exists(version_key(model, version, MANIFEST_FILE)):
        return None
    existing = catalog.read_manifest(store, model, version)
    if existing.weights.sha256 != sha256:
        raise VersionExistsError(
            f"{model}/{version} is already published with other weights (sha256 "
            f"{existing.weights.sha256[:12]}…, these are {sha256[:12]}…); versions are "
            "immutable: publish under a new version and move the alias"
        )
    return existing


def _run_golden(
    module: torch.nn.Module, golden_inputs: Mapping[str, torch.Tensor], rtol: float, atol: float,
    outputs: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """Run the golden inputs twice in eval mode and return the (checked) outputs: all of them,
    or those named by ``outputs``."""
    module.eval()
    try:
        with torch.inference_mode():
            first = select_outputs(module(**golden_inputs), outputs)
            second = select_outputs(module(**golden_inputs), outputs)
    except (SnapshotError, ManifestError):
        raise
    except Exception as e:  # the model's own code: whatever it raises, publishing stops
        raise SnapshotError(
            f"the model failed on its golden inputs ({type(e).__name__}: {e}); check the "
            "declared inputs match what forward() takes, by keyword"
        ) from e
    check = compare_outputs(second, first, rtol=rtol, atol=atol)
    if not check.ok:
        reason = check.reason.replace("golden output", "first run")
        raise SnapshotError(
            f"the model does not answer its golden inputs reproducibly in eval mode: {reason}; "
            "remove randomness from forward() or loosen rtol/atol"
        )
    return {k: v.detach().to("cpu").clone() for k, v in first.items()}


def _check_golden_inputs(
    golden_inputs: Mapping[str, torch.Tensor], specs: Sequence[InputSpec]
) -> dict[str, torch.Tensor]:
    names = {s.name for s in specs}
    if set(golden_inputs) != names or not all(isinstance(v, torch.Tensor) for v in golden_inputs.values()):
        raise ManifestError(
            f"golden inputs {sorted(golden_inputs)} must be tensors named exactly as the declared "
            f"inputs {sorted(names)}"
        )
    return dict(golden_inputs)


def _weights_info(paths: Path | Sequence[Path]) -> WeightsInfo:
    """Size, sha256 and tensor index of the weights: one file (a :class:`Path`), or shards (a
    list: each keeps its name).

    Raises:
        SafetensorsHeaderError: a header that is malformed or lies.
        ManifestError: shards with names that cannot be shard names, twice the same name, too
            many, or the same tensor in two of them.
    """
    def describe(path: Path, name: str) -> WeightsFile:
        header_bytes, tensors, _ = read_header_file(path)
        return WeightsFile(
            file=name, size_bytes=path.stat().st_size, sha256=sha256_file(path), header_bytes=header_bytes,
            tensors=tuple(sorted(tensors.values(), key=lambda t: t.offsets)),
        )  # fmt: skip

    if isinstance(paths, Path):
        one = describe(paths, WEIGHTS_FILE)
        return WeightsInfo(one.file, one.size_bytes, one.sha256, one.header_bytes, one.tensors)
    paths = [Path(p) for p in paths]
    if not paths or len(paths) > MAX_SHARDS:
        raise ManifestError(f"a sharded snapshot has 1 to {MAX_SHARDS} shard files, got {len(paths)}")
    for path in paths:
        problem = shard_file_problem(path.name)
        if problem is not None:
            raise ManifestError(f"shard {path}: its name {problem}; rename the file (and its index entry)")
    if len({p.name for p in paths}) != len(paths):
        raise ManifestError(f"shard files {[p.name for p in paths][:8]} name a file twice")
    shards = [describe(path, path.name) for path in paths]
    holder: dict[str, str] = {}
    for shard in shards:
        for t in shard.tensors:
            if t.name in holder:
                raise ManifestError(
                    f"tensor {t.name!r} is in both {holder[t.name]} and {shard.file}: the shards of one "
                    "model must hold distinct tensors; re-save the model"
                )
            holder[t.name] = shard.file
    return WeightsInfo.from_shards(shards)


def _publish(
    store: SnapshotStore,
    model: str,
    version: str,
    weights_path: Path | Sequence[Path],
    load_module: Callable[[], torch.nn.Module],
    architecture: ArchitectureSpec,
    specs: tuple[InputSpec, ...],
    golden_inputs: Mapping[str, torch.Tensor] | None,
    *,
    rtol: float,
    atol: float,
    metadata: Mapping[str, Any] | None,
    show_progress: bool | None,
    set_live: bool,
    tmp: Path,
    outputs: Sequence[str] = (),
    skip_keys: Sequence[str] = (),
    batching: Mapping[str, Any] | None = None,
    compile_spec: Mapping[str, Any] | None = None,
) -> Manifest:
    outputs = _check_output_names(outputs)
    batch = parse_batching(dict(batching)) if batching else {}
    compiled = parse_compile(dict(compile_spec)) if compile_spec else {}
    weights = _weights_info(weights_path)
    local = [weights_path] if isinstance(weights_path, Path) else [Path(p) for p in weights_path]
    existing = _existing(store, model, version, weights.sha256)
    if existing is not None:
        _maybe_set_live(store, model, version, set_live)  # a first publish may have died here
        return existing

    unbounded = ungeneratable_inputs(specs) if golden_inputs is None else []
    if unbounded:
        raise ManifestError(
            f"integer inputs {unbounded} declare no value_range, so generated golden inputs would "
            "be meaningless: pass real golden inputs (--golden-inputs FILE.safetensors, publish's "
            "golden_inputs=...) or declare each input's value_range (e.g. [0, vocab_size))"
        )
    inputs = (
        make_golden_inputs(specs)
        if golden_inputs is None
        else _check_golden_inputs(golden_inputs, specs)
    )
    golden_out = _run_golden(load_module(), inputs, rtol, atol, outputs)
    for name, tensor in golden_out.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SnapshotError(
                f"the model's golden output {name!r} holds NaN or inf: refusing to publish a "
                "model whose health check could never pass"
            )
    golden_path = tmp / GOLDEN_FILE
    write_golden(golden_path, inputs, golden_out)

    manifest = Manifest(
        model=model,
        version=version,
        created_at=catalog.utc_now_iso(),
        architecture=architecture,
        weights=weights,
        inputs=specs,
        golden=GoldenInfo(
            file=GOLDEN_FILE,
            size_bytes=golden_path.stat().st_size,
            sha256=sha256_file(golden_path),
            inputs=tuple(s.name for s in specs),
            outputs=tuple(golden_out),
            rtol=rtol,
            atol=atol,
        ),
        metadata=dict(metadata or {}),
        outputs=tuple(outputs),
        skip_keys=tuple(sorted(skip_keys)),
        batching=batch,
        compile=compiled,
    )
    manifest = parse_manifest(manifest.to_json())  # the reader's checks, before any upload

    with transfer_progress(show_progress) as task:
        progress = task(f"{model}/{version} weights", weights.size_bytes)
        for entry, path in zip(weights.files, local):  # each shard under its own name
            store.put_file(version_key(model, version, entry.file), path, progress)
        store.put_file(version_key(model, version, GOLDEN_FILE), golden_path)
    store.put_bytes(version_key(model, version, MANIFEST_FILE), manifest.to_json())
    _maybe_set_live(store, model, version, set_live)
    return manifest


def _maybe_set_live(store: SnapshotStore, model: str, version: str, set_live: bool) -> None:
    """Point ``live`` at ``version`` when the model has no ``live`` alias yet."""
    if set_live and catalog.get_alias(store, model, catalog.LIVE_ALIAS) is None:
        catalog.set_alias(store, model, catalog.LIVE_ALIAS, version)


def publish_module(
    store: SnapshotStore,
    model: str,
    version: str,
    module: torch.nn.Module,
    architecture: ArchitectureLike,
    inputs: InputsLike,
    golden_inputs: Mapping[str, torch.Tensor] | None = None,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    metadata: Mapping[str, Any] | None = None,
    show_progress: bool | None = None,
    allowed_architectures: Sequence[str] = (),
    workdir: Path | None = None,
    set_live: bool = True,
    outputs: Sequence[str] | None = None,
    batching: Mapping[str, Any] | None = None,
    compile_spec: Mapping[str, Any] | None = None,
) -> Manifest:
    """Publish an in-memory module as ``model``/``version``.

    Args:
        store: where to publish.
        model, version: safe names (letters, digits, ``.``, ``_``, ``-``).
        module: the model; its state dict is saved (tied weights once) from CPU.
        architecture: the registered factory that rebuilds ``module`` (``pkg.mod:fn`` and
            kwargs), as :class:`ArchitectureSpec`, a string, or a dict.
        inputs: the declared inputs of ``forward`` (called by keyword).
        golden_inputs: inputs to record outputs for; generated from ``inputs`` when None.
        rtol, atol: the health check's tolerances, stored in the manifest.
        metadata: free-form JSON stored in the manifest.
        show_progress: a progress bar on stderr; None shows it only on a terminal.
        allowed_architectures: factories allowed on top of the entry-point registry.
        workdir: where to write temporary files (default: the system temp dir).
        set_live: point the ``live`` alias at this version when the model has no ``live`` yet.
        outputs: the outputs the model answers with (recorded in the manifest; the worker
            encodes only those); None: all of them, which must then be plain tensors.
        batching: ``{"max_batch": n, "max_wait_ms": t}``: concurrent requests on one worker
            run as one forward (settings may override it); None: one forward per request.
        compile_spec: ``{"backend": "inductor", "mode": "default"}``: workers run the model
            through ``torch.compile`` before its warm-up (docs/compile.md); None: eagerly.

    Returns:
        The published manifest (the existing one when the same bytes were already published).

    Raises:
        UnregisteredArchitectureError, InvalidNameError, ManifestError: bad arguments
            (nothing uploaded).
        VersionExistsError: the version exists with other bytes.
        SnapshotError: the model fails on, or is not reproducible on, its golden inputs.
        StoreError: the upload failed (no manifest was written, so no version is visible).
    """
    spec = as_architecture(architecture)
    check_allowed(spec.factory, allowed_architectures)
    validate_name(model)
    validate_name(version, "version")
    specs = as_input_specs(inputs)
    with tempfile.TemporaryDirectory(prefix="warmstart-publish-", dir=workdir) as tmp_name:
        tmp = Path(tmp_name)
        weights_path = tmp / WEIGHTS_FILE
        try:
            save_model(module, str(weights_path))
        except (ValueError, RuntimeError) as e:
            raise SnapshotError(f"cannot save the model's weights as safetensors: {e}") from e
        return _publish(
            store, model, version, weights_path, lambda: module, spec, specs, golden_inputs,
            rtol=rtol, atol=atol, metadata=metadata, show_progress=show_progress,
            set_live=set_live, tmp=tmp, outputs=outputs or (), batching=batching, compile_spec=compile_spec,
        )  # fmt: skip


def publish_file(
    store: SnapshotStore,
    model: str,
    version: str,
    weights_path: Path | Sequence[Path],
    architecture: ArchitectureLike,
    inputs: InputsLike,
    golden_inputs: Mapping[str, torch.Tensor] | None = None,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    metadata: Mapping[str, Any] | None = None,
    show_progress: bool | None = None,
    allowed_architectures: Sequence[str] = (),
    workdir: Path | None = None,
    set_live: bool = True,
    outputs: Sequence[str] | None = None,
    skip_non_persistent: bool = False,
    batching: Mapping[str, Any] | None = None,
    compile_spec: Mapping[str, Any] | None = None,
) -> Manifest:
    """Publish an existing safetensors file, byte for byte, as ``model``/``version``.

    ``weights_path`` may also be a list of shard files (the files of one model, each holding
    other tensors): each is published byte for byte under its own name (which must be a plain
    ``*.safetensors`` name), the manifest is format version 2, and the module restores from
    their union.

    The file is restored with the architecture (as a worker would) to record golden outputs,
    so a file that does not fit the architecture is refused before anything is uploaded.
    Arguments, returns and errors as :func:`publish_module`, plus ``skip_non_persistent``:
    tensors of the file that are non-persistent buffers of the built module (which computes
    them itself; older library versions saved them) are left unloaded, and recorded in the
    manifest's ``skip_keys`` (rule ``non_persistent_buffers``). Nothing else is ever skipped.

    Raises:
        SafetensorsHeaderError: the file's header is malformed or lies.
        RestoreError: the file does not fit the architecture.
        SnapshotNotFoundError: ``weights_path`` does not exist.
        ManifestError: shards with bad or repeated names, too many, or sharing a tensor.
    """
    from warmstart.snapshot.restore import restore_weights  # torch-side restore, owned elsewhere

    spec = as_architecture(architecture)
    check_allowed(spec.factory, allowed_architectures)
    validate_name(model)
    validate_name(version, "version")
    specs = as_input_specs(inputs)
    if isinstance(weights_path, (str, Path)):
        weights_path = Path(weights_path)
        paths = [weights_path]
    else:
        if isinstance(weights_path, bytes) or not isinstance(weights_path, Sequence):
            raise ManifestError("weights_path must be a file or a list of shard files")
        weights_path = paths = [Path(p) for p in weights_path]
        if len(paths) > MAX_SHARDS:  # before anything is read
            raise ManifestError(f"a sharded snapshot has at most {MAX_SHARDS} shard files, got {len(paths)}")
    for path in paths:
        if not path.is_file():
            raise SnapshotNotFoundError(f"weights file {path} does not exist")

    skip_keys = _computed_keys(paths, spec, allowed_architectures) if skip_non_persistent else ()

    def load() -> torch.nn.Module:
        return restore_weights(
            weights_path, spec, allowed_architectures=tuple(allowed_architectures), skip_keys=skip_keys
        )

    with tempfile.TemporaryDirectory(prefix="warmstart-publish-", dir=workdir) as tmp_name:
        return _publish(
            store, model, version, weights_path, load, spec, specs, golden_inputs,
            rtol=rtol, atol=atol, metadata=metadata, show_progress=show_progress,
            set_live=set_live, tmp=Path(tmp_name), outputs=outputs or (), skip_keys=skip_keys,
            batching=batching, compile_spec=compile_spec,
        )  # fmt: skip


def _computed_keys(paths: Sequence[Path], spec: ArchitectureSpec, allowed: Sequence[str]) -> tuple[str, ...]:
    """Tensors of the files (one, or every shard) that the module built from ``spec`` holds as
    non-persistent buffers."""
    from warmstart.snapshot import registry
    from warmstart.snapshot.restore import _build_on_meta, non_persistent_buffers

    names: set[str] = set()
    for path in paths:
        names.update(read_header_file(path)[1])
    module = _build_on_meta(registry.resolve_factory(spec.factory, allowed), spec)
    return tuple(sorted(non_persistent_buffers(module) & names))


def publish_examples(
    store: SnapshotStore,
    names: Sequence[str] | None = None,
    version: str = "v1",
    *,
    seed: int = 0,
    **options: Any,
) -> list[Manifest]:
    """Publish example models from :mod:`warmstart.snapshot.examples` (all of them when ``names`` is None).

    Weights are initialised from ``seed`` (the global RNG is restored afterwards), so
    publishing the same example again gives the same bytes and is a no-op.

    Args:
        options: passed to :func:`publish_module` (``rtol``, ``show_progress``, ...).

    Raises:
        SnapshotNotFoundError: an unknown example name (the message lists the known ones).
        And as :func:`publish_module`.
    """
    from warmstart.snapshot.examples import EXAMPLE_MODELS

    chosen = list(EXAMPLE_MODELS) if names is None else list(names)
    unknown = [n for n in chosen if n not in EXAMPLE_MODELS]
    if unknown:
        raise SnapshotNotFoundError(f"no example model {unknown}; examples: {sorted(EXAMPLE_MODELS)}")
    manifests = []
    for name in chosen:
        example = EXAMPLE_MODELS[name]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = example.build()
        manifests.append(
            publish_module(
                store, example.name, version, module, example.architecture, example.inputs,
                example.golden_inputs(seed=seed), **options,
            )
        )  # fmt: skip
    return manifests
