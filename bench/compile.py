"""``warmstart bench compile``: time to HOT of a model published with ``--compile inductor``,
with an empty compile cache, with the host's warm compile cache, and from a signed artifact
in the store, against the same weights served eagerly, each in fresh processes.

The model is an MLP whose layers inductor fuses into generated C++ kernels (a single
``Linear`` would compile to a library call and hide the cost). What is timed is the worker's
own path, ``ModelPool.ensure(model, HOT)``: fetch from the store into an empty snapshot cache,
restore, compile (for the compiled paths), warm-up until latency settles, golden check.

Every path is warmed alike before its clock: torch's first-use costs (``prepare_process``),
the compile stack imported, and one unrelated function compiled by inductor into a throwaway
cache (which pays the process's one-time compile costs: the C++ toolchain's checks, worker
pools). Then each probe points inductor at its own cache directory:

- ``compiled_empty``: a new, empty directory;
- ``compiled_host_cache``: the directory the ``compiled_empty`` probe of the same round
  filled (a worker restarting on the same host);
- ``compiled_signed_artifact``: a new, empty directory, and the store's signed artifact
  (pushed by ``warmstart compile-cache push`` in another process) loaded into it;
- ``eager``: the same weights published without ``--compile``.

Once HOT, each probe also times the first request at each of :data:`NEW_BATCH_SIZES` (batch
sizes neither the golden inputs nor the warm-up used): a compiled model whose compile step
left a size uncompiled pays a compile there, at request time; the eager path is the baseline.

Run as a module for one probe: ``python -m warmstart.bench.compile SPEC_JSON``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

FACTORY = "warmstart.bench.compile:build_compile_mlp"
PATHS = ("compiled_empty", "compiled_host_cache", "compiled_signed_artifact", "eager")
TARGET = 0.2  # time to HOT with the host's warm cache at most this share of an empty cache's
#: Batch sizes first sent once the model is HOT (the golden and check inputs have 4 rows).
NEW_BATCH_SIZES = (1, 7, 33)


def build_compile_mlp(features: int = 256, outputs: int = 64) -> nn.Module:
    """Blocks of Linear → activation → LayerNorm, each of another width and activation, so
    that inductor generates several distinct fused kernels (as a real network makes it do)."""
    widths = (512, 384, 448, 320, 576, 256)
    activations = (nn.GELU, nn.SiLU, nn.Tanh, nn.Mish, nn.GELU, nn.Sigmoid)
    layers: list[nn.Module] = []
    width_in = features
    for width, activation in zip(widths, activations):
        layers += [nn.Linear(width_in, width), activation(), nn.LayerNorm(width)]
        width_in = width
    layers.append(nn.Linear(width_in, outputs))

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # called by keyword, as inputs are
            return self.layers(x)

    return MLP()


INPUTS = [{"name": "x", "dtype": "float32", "shape": ["batch", 256]}]


def _check_input() -> torch.Tensor:
    return torch.randn(4, 256, generator=torch.Generator().manual_seed(1))


def _prewarm(throwaway: Path) -> None:
    """The same for every path: first-use costs, the compile stack, one inductor compile of
    an unrelated function into a throwaway cache (then the path's own cache again)."""
    from warmstart.snapshot.process import prepare_process

    prepare_process("cpu")
    own = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(throwaway)
    import torch._dynamo  # noqa: F401  (the compile stack, imported before the clock)
    import torch._inductor  # noqa: F401

    fn = torch.compile(lambda t: torch.sigmoid(t * 2.0 + 1.0).sum(dim=-1))
    fn(torch.randn(3, 5))
    torch._dynamo.reset()  # nothing of it is reused by the timed compile
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = own


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """One path in this (fresh) process: pre-warm alike, point inductor at this path's cache,
    then time the pool's ensure(HOT)."""
    from warmstart.infra.settings import load_settings
    from warmstart.snapshot.cache import SnapshotCache
    from warmstart.snapshot.stores import open_store_url
    from warmstart.workers.pool import ModelPool
    from warmstart.workers.stub import StubGate, StubRegistry
    from warmstart.workers.wire import decode_outputs, encode_tensor

    path = spec["path"]
    # The path's compile cache came in TORCHINDUCTOR_CACHE_DIR, which a worker honours as the
    # operator's choice (workers/compiling.py).
    _prewarm(Path(spec["throwaway_dir"]))
    settings = load_settings(
        store_url=spec["store_url"], cache_dir=spec["snapshot_cache_dir"], allowed_architectures=[FACTORY],
        device="cpu", verify_interval_s=0, signing_key=spec["key"] if path == "compiled_signed_artifact" else None,
    )  # fmt: skip
    pool = ModelPool(settings, "bench", open_store_url(settings.store_url),
                     SnapshotCache(settings.cache_dir, settings.cache_budget_bytes), StubRegistry(), StubGate(),
                     torch.device("cpu"))  # fmt: skip
    model = "mlp-eager" if path == "eager" else "mlp"
    t0 = time.perf_counter()
    slot = pool.ensure(model, "HOT")
    seconds = time.perf_counter() - t0
    answer = decode_outputs(pool.infer(model, {"x": encode_tensor(_check_input())})["outputs"])["output"]
    reference = torch.load(spec["reference_path"], weights_only=True)
    first_request_ms = {}
    for rows in NEW_BATCH_SIZES:
        x = encode_tensor(torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows)))
        t0 = time.perf_counter()
        pool.infer(model, {"x": x})
        first_request_ms[str(rows)] = (time.perf_counter() - t0) * 1000
    return {"path": path, "time_to_hot_s": seconds, "compile": slot.compile_report,
            "warmup_runs": slot.warmup.runs if slot.warmup else None,
            "max_abs_error": float((answer - reference).abs().max()),
            "new_batch_first_request_ms": first_request_ms}  # fmt: skip


def _run(args: list[str], compile_dir: str = "", timeout_s: float = 900) -> str:
    from warmstart.infra.errors import WarmstartError

    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": compile_dir})  # fmt: skip
    if done.returncode != 0:
        raise WarmstartError(f"{' '.join(args[:3])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def run_compile_benchmark(repeats: int = 2, workdir: Path | None = None, progress: Any = None) -> dict[str, Any]:
    """Publish the MLP (compiled and eager), push its signed artifact from another process,
    then ``repeats`` rounds of the four probes, each in a fresh process."""
    from warmstart.snapshot.publish import publish_module
    from warmstart.snapshot.stores import open_store_url

    say = progress or (lambda _line: None)
    root = Path(tempfile.mkdtemp(prefix="warmstart-bench-compile-", dir=workdir))
    try:
        store_url = f"file://{root / 'store'}"
        store = open_store_url(store_url)
        torch.manual_seed(0)
        module = build_compile_mlp().eval()
        for name, compile_spec in (("mlp", {"backend": "inductor", "mode": "default"}), ("mlp-eager", None)):
            publish_module(store, name, "v1", module, FACTORY, INPUTS, show_progress=False,
                           allowed_architectures=[FACTORY], compile_spec=compile_spec, rtol=1e-3, atol=1e-4)  # fmt: skip
        with torch.inference_mode():
            torch.save(module(_check_input()), root / "reference.pt")
        key = secrets.token_hex(32)
        say("pushing the signed compile artifact (compiles in a fresh process)")
        env_settings = {"WARMSTART_STORE_URL": store_url, "WARMSTART_CACHE_DIR": str(root / "push-cache"),
                        "WARMSTART_ALLOWED_ARCHITECTURES": FACTORY, "WARMSTART_SIGNING_KEY": key,
                        "WARMSTART_DEVICE": "cpu"}  # fmt: skip
        os.environ.update(env_settings)
        try:
            pushed = json.loads(_run(["-m", "warmstart.cli", "compile-cache", "push", "mlp", "--json"]))
        finally:
            for name in env_settings:
                os.environ.pop(name, None)
        samples: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
        for r in range(1, repeats + 1):
            cache_of = {"compiled_empty": f"host-{r}", "compiled_host_cache": f"host-{r}",
                        "compiled_signed_artifact": f"artifact-{r}", "eager": f"eager-{r}"}  # fmt: skip
            for path in PATHS:
                spec = {"path": path, "store_url": store_url, "key": key, "reference_path": str(root / "reference.pt"),
                        "throwaway_dir": str(root / f"throwaway-{r}-{path}"), "compile_dir": str(root / cache_of[path]),
                        "snapshot_cache_dir": str(root / f"snapshots-{r}-{path}")}  # fmt: skip
                out = _run(["-m", "warmstart.bench.compile", json.dumps(spec)], compile_dir=spec["compile_dir"])
                result = json.loads(out.strip().splitlines()[-1])
                if result["max_abs_error"] > 1e-3:
                    raise AssertionError(f"probe {path} answers differently from the published module: {result}")
                samples[path].append(result)
                say(f"[{r}/{repeats}] {path}: HOT in {result['time_to_hot_s']:.2f} s"
                    + (f" (compile {result['compile']['seconds']:.2f} s, {result['compile']['source']})" if result["compile"] else ""))
        return {
            "model": {"parameters": sum(p.numel() for p in module.parameters()),
                      "size_bytes": store.size("snapshots/mlp/v1/model.safetensors")},
            "repeats": repeats, "pushed": pushed, "samples": samples,
            **summarise_compile(samples),
        }  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


def summarise_compile(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians of time to HOT per path, each path's ratio to the empty cache, and the target
    (the host cache's ratio at most :data:`TARGET`). Pure."""
    medians = {p: statistics.median(s["time_to_hot_s"] for s in samples[p]) for p in PATHS}
    ratios = {f"{p}/compiled_empty": medians[p] / medians["compiled_empty"] for p in PATHS[1:]}
    # The slowest first request at a new batch size, median over the rounds (absent in
    # samples written before it was measured).
    new_batch = {p: statistics.median(max(s["new_batch_first_request_ms"].values()) for s in samples[p])
                 for p in PATHS if all(s.get("new_batch_first_request_ms") for s in samples[p])}
    return {"medians_s": medians, "ratios": ratios, "new_batch_first_request_ms": new_batch,
            "target": {"ratio": "compiled_host_cache/compiled_empty", "bound": TARGET,
                       "met": ratios["compiled_host_cache/compiled_empty"] <= TARGET}}  # fmt: skip


def compile_tables(result: dict[str, Any]) -> list[Any]:
    from warmstart.bench.report import make_table

    m, s = result["medians_s"], result["samples"]
    rows = []
    for p in PATHS:
        compile_s = [x["compile"]["seconds"] for x in s[p] if x["compile"]]
        source = s[p][-1]["compile"]["source"] if s[p][-1]["compile"] else "—"
        new_batch = result.get("new_batch_first_request_ms", {}).get(p)
        rows.append([p, f"{m[p]:.2f}", f"{statistics.median(compile_s):.2f}" if compile_s else "—", source,
                     f"{m[p] / m['compiled_empty']:.2f}×", "—" if new_batch is None else f"{new_batch:.1f}"])  # fmt: skip
    t = result["target"]
    sizes = "/".join(str(b) for b in NEW_BATCH_SIZES)
    return [make_table(
        f"Time to HOT, {result['model']['parameters']:,} parameters, fresh processes, medians of {result['repeats']}",
        ["path", "time to HOT (s)", "compile step (s)", "compiled code from", "÷ empty cache",
         f"first request at batch {sizes}, slowest (ms)"],
        rows,
        caption=f"target: {t['ratio']} ≤ {t['bound']:g}: {'met' if t['met'] else 'NOT met'}",
    )]  # fmt: skip


if __name__ == "__main__":
    from warmstart.bench.report import probe_main

    sys.exit(probe_main("compile", probe, sys.argv[1:]))
