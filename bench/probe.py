"""One measurement in a fresh process: load a model one way, then time its inferences.

Run by :mod:`warmstart.bench.restore` as ``python -m warmstart.bench.probe SPEC_JSON``; prints one JSON object on
stdout (everything else the libraries print goes to stderr) and exits.

What is timed, identically for every path:

* not timed: interpreter start, ``import torch`` and the path's own library, importing the
  architecture's factory module, reading the manifest and the sample inputs,
  ``prepare_process()`` (torch's one-time lazy initialisation, which warmstart pays once per
  worker at start, not per model), and one tiny load through the path's own loader
  (:func:`warm_loader`: every path is warmed alike). ``setup_s`` reports this cost for reference.
* ``restore_s``: from the bytes on disk to an ``eval()`` module ready for inference.
* ``first_infer_s``: the first forward pass on the sample inputs (under ``inference_mode``).
* ``steady_infer_s``: the median of ``steady_runs`` further forward passes.

Afterwards, untimed, the output is compared with the reference recorded at setup, so that a
path that loaded the wrong bytes cannot post a good time.
"""

from __future__ import annotations

import time

_PROCESS_T0 = time.perf_counter()  # before the heavy imports below, for setup_s

import importlib  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

#: The loading paths this probe knows, in the order the benchmark reports them.
PATHS = ("warmstart", "torch_load", "torch_load_mmap", "safetensors_load_file", "tensorizer")

Loader = Callable[[], nn.Module]


def _factory(spec: dict[str, Any]) -> Callable[[], nn.Module]:
    """The architecture's factory bound to its kwargs (module imported now, before the clock)."""
    module_name, _, attr = spec["factory"].partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    kwargs = dict(spec["factory_kwargs"])
    return lambda: factory(**kwargs)


def _prepare_warmstart(spec: dict[str, Any]) -> Loader:
    from warmstart.snapshot.manifest import parse_manifest
    from warmstart.snapshot.restore import restore_model

    manifest = parse_manifest(Path(spec["manifest_path"]).read_bytes())
    weights = Path(spec["weights_path"])
    allowed = (manifest.architecture.factory,)
    importlib.import_module(manifest.architecture.factory.partition(":")[0])

    def load() -> nn.Module:
        return restore_model(weights, manifest, device="cpu", populate=True, allowed_architectures=allowed)

    return load


def prepare_torch_load(spec: dict[str, Any]) -> Loader:
    build, path = _factory(spec), spec["weights_path"]

    def load() -> nn.Module:
        state = torch.load(path, weights_only=True)
        model = build()
        model.load_state_dict(state)
        return model.eval()

    return load


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build modules with their parameters on the meta device but their buffers real.

    The usual recipe (accelerate's ``init_empty_weights(include_buffers=False)``): buffers
    computed in ``__init__`` and not saved (non-persistent ones) must stay real, or the module
    cannot run after ``load_state_dict(assign=True)``.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None:
            kwargs = {"requires_grad": param.requires_grad}
            module._parameters[name] = type(param)(param.to("meta"), **kwargs)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def _prepare_torch_load_mmap(spec: dict[str, Any]) -> Loader:
    build, path = _factory(spec), spec["weights_path"]

    def load() -> nn.Module:
        state = torch.load(path, mmap=True, weights_only=True)
        with _parameters_on_meta():
            model = build()
        model.load_state_dict(state, assign=True)
        return model.eval()

    return load


def _prepare_safetensors_load_file(spec: dict[str, Any]) -> Loader:
    from safetensors.torch import load_file

    build, path = _factory(spec), spec["weights_path"]

    def load() -> nn.Module:
        state = load_file(path)
        model = build()
        model.load_state_dict(state)
        return model.eval()

    return load


def _prepare_tensorizer(spec: dict[str, Any]) -> Loader:
    # tensorizer's own fast recipe: skip parameter init, then deserialize into the module.
    from tensorizer import TensorDeserializer
    from tensorizer.utils import no_init_or_tensor

    build, path = _factory(spec), spec["weights_path"]

    def load() -> nn.Module:
        model = no_init_or_tensor(build)
        deserializer = TensorDeserializer(path, device="cpu")
        deserializer.load_into_module(model)
        deserializer.close()
        return model.eval()

    return load


def warm_loader(path: str) -> None:
    """One tiny untimed load through ``path``'s own loader (a baseline's first ``torch.load``,
    ``load_file`` or deserializer pays lazy imports and initialisation, as warmstart's first
    restore does; ``prepare_process`` pays warmstart's), so every path is warmed alike."""
    import tempfile

    from warmstart.snapshot.process import WARMUP_FACTORY, build_warmup_module

    if path == "warmstart":
        return  # prepare_process() restored its tiny module through restore_weights
    with tempfile.TemporaryDirectory(prefix="warmstart-probe-warm-") as tmp:
        module = build_warmup_module()
        target = Path(tmp) / "tiny"
        if path in ("torch_load", "torch_load_mmap"):
            torch.save(module.state_dict(), target)
        elif path == "safetensors_load_file":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(target))
        elif path == "tensorizer":
            from tensorizer import TensorSerializer

            serializer = TensorSerializer(str(target))
            serializer.write_module(module)
            serializer.close()
        _PREPARERS[path]({"weights_path": str(target), "factory": WARMUP_FACTORY, "factory_kwargs": {}})()


_PREPARERS: dict[str, Callable[[dict[str, Any]], Loader]] = {
    "warmstart": _prepare_warmstart,
    "torch_load": prepare_torch_load,
    "torch_load_mmap": _prepare_torch_load_mmap,
    "safetensors_load_file": _prepare_safetensors_load_file,
    "tensorizer": _prepare_tensorizer,
}


def flatten_outputs(output: Any) -> list[torch.Tensor]:
    """A model's output (a tensor, or a tuple/list/dict of them) as a flat list of tensors."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for key in sorted(output) for t in flatten_outputs(output[key])]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in flatten_outputs(item)]
    return []


def _load_inputs(path: str) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The sample inputs (``input.<name>``) and reference outputs (``output.<i>``) from setup."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    inputs = {k.removeprefix("input."): v for k, v in tensors.items() if k.startswith("input.")}
    outputs = sorted((k for k in tensors if k.startswith("output.")), key=lambda k: int(k.split(".")[1]))
    return inputs, [tensors[k] for k in outputs]


def _usage() -> tuple[float, int, int]:
    """(CPU seconds of every thread, involuntary context switches, minor page faults) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_nivcsw, usage.ru_minflt


def _usage_delta(before: tuple[float, int, int], after: tuple[float, int, int]) -> dict[str, float]:
    return {
        "cpu_s": after[0] - before[0],
        "preemptions": after[1] - before[1],
        "minor_faults": after[2] - before[2],
    }


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one probe described by ``spec`` and return its measurements.

    Args:
        spec: ``path`` (one of :data:`PATHS`), ``weights_path`` (the file that path loads),
            ``manifest_path``, ``inputs_path``, ``factory``, ``factory_kwargs``,
            ``steady_runs``, and optionally ``threads`` (torch intra-op threads; None keeps
            torch's default) and ``rtol``/``atol`` for the output check.

    Returns:
        ``path``, ``setup_s``, ``restore_s``, ``first_infer_s``, ``steady_infer_s`` (median),
        ``steady_samples_s``, ``output_matches``, ``max_abs_error``, ``torch_threads``, ``pid``.

    Raises:
        ValueError: an unknown path.
    """
    path = spec["path"]
    if path not in _PREPARERS:
        raise ValueError(f"unknown probe path {path!r}; expected one of {PATHS}")
    from warmstart.snapshot.process import prepare_process

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    prepare_process(device="cpu")  # warmstart's tiny restore, through its own loader...
    warm_loader(path)  # ...and the same for every other path: each pays its first use untimed
    load = _PREPARERS[path](spec)
    inputs, reference = _load_inputs(spec["inputs_path"])

    clock = time.perf_counter
    u_start = _usage()
    t_start = clock()
    model = load()
    t_restored = clock()
    u_restored = _usage()
    with torch.inference_mode():
        first = model(**inputs)
        t_first = clock()
        u_first = _usage()
        steady: list[float] = []
        for _ in range(int(spec["steady_runs"])):
            t0 = clock()
            model(**inputs)
            steady.append(clock() - t0)

    outputs = flatten_outputs(first)
    rtol, atol = float(spec.get("rtol", 1e-4)), float(spec.get("atol", 1e-4))
    matches = len(outputs) == len(reference) and all(
        o.shape == r.shape and torch.allclose(o.float(), r.float(), rtol=rtol, atol=atol)
        for o, r in zip(outputs, reference)
    )
    errors = [
        (o.float() - r.float()).abs().max().item() for o, r in zip(outputs, reference) if o.shape == r.shape
    ]
    max_err = max(errors) if errors else None
    return {
        "path": path,
        "setup_s": t_start - _PROCESS_T0,
        "restore_s": t_restored - t_start,
        "first_infer_s": t_first - t_restored,
        "steady_infer_s": statistics.median(steady),
        "steady_samples_s": steady,
        "output_matches": bool(matches),
        "max_abs_error": max_err,
        # Diagnostics, per timed region: CPU seconds (all threads) and the times the process
        # was preempted. Wall time far above CPU time with many preemptions means other
        # processes took the cores (noise), not that the path was slow.
        "restore_usage": _usage_delta(u_start, u_restored),
        "first_infer_usage": _usage_delta(u_restored, u_first),
        "torch_threads": torch.get_num_threads(),
        "pid": os.getpid(),
    }


def main(argv: list[str]) -> int:
    from warmstart.bench.report import probe_main

    return probe_main("probe", measure, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
