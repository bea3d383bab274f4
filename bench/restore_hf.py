"""``warmstart bench restore --hf-dir DIR``: a Hugging Face folder restored by warmstart, by
``AutoModel.from_pretrained(DIR)`` and by ``torch.load`` + init, each in fresh processes.

Every path is warmed alike before its clock starts: interpreter, torch and transformers
imported, and one tiny load through the path's own loader (warmstart: what a worker does at
start, ``prepare_process`` and ``prepare_architectures``, which builds a tiny BERT; the
baselines: a tiny BERT folder through ``from_pretrained``, a tiny ``.pt`` through
``torch.load``). Then the real model is loaded twice, timed: ``first_s`` (the first load of
this architecture's config in the process) and ``again_s`` (loaded before: what a worker
pays when it restores a model it held earlier). The output is checked against the reference.

Run as a module for one probe: ``python -m warmstart.bench.restore_hf SPEC_JSON``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PATHS = ("warmstart", "from_pretrained", "torch_load")


def _inputs() -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (2, 16), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _tiny_config() -> dict[str, Any]:
    from warmstart.snapshot.hf import build_hf_model

    return dict(build_hf_model.warmup_kwargs["config"])  # type: ignore[attr-defined]


def _loader(path: str, spec: dict[str, Any], tiny: bool) -> Any:
    import torch
    import transformers

    folder = spec["tiny_dir"] if tiny else spec["hf_dir"]
    if path == "warmstart":
        from warmstart.snapshot.manifest import parse_manifest
        from warmstart.snapshot.restore import restore_model

        manifest = parse_manifest(Path(spec["manifest_path"]).read_bytes())
        folder_path = Path(spec["hf_dir"])  # model.safetensors, or the shards the manifest names
        return lambda: restore_model(folder_path, manifest)
    if path == "from_pretrained":
        return lambda: transformers.AutoModel.from_pretrained(folder).eval()
    config = json.loads((Path(folder) / "config.json").read_text())
    cls = getattr(transformers, config["architectures"][0])
    pt = spec["tiny_pt"] if tiny else spec["torch_path"]

    def load() -> Any:
        state = torch.load(pt, weights_only=True)
        model = cls(transformers.AutoConfig.for_model(**config))
        model.load_state_dict(state)
        return model.eval()

    return load


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """One path in this (fresh) process: warm alike, then two timed loads and a check."""
    import torch

    path = spec["path"]
    if path == "warmstart":
        from warmstart.snapshot.process import prepare_architectures, prepare_process

        prepare_process("cpu")
        prepare_architectures()
    else:
        from warmstart.snapshot.process import prepare_process

        prepare_process("cpu")  # torch's own first-use costs, paid for every path
        _loader(path, spec, tiny=True)()
    load = _loader(path, spec, tiny=False)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        model = load()
        times.append(time.perf_counter() - t0)
    with torch.inference_mode():
        out = model(**_inputs())
    hidden = out["last_hidden_state"] if isinstance(out, dict) else out.last_hidden_state
    reference = torch.load(spec["reference_path"], weights_only=True)
    return {"path": path, "first_s": times[0], "again_s": times[1],
            "max_abs_error": float((hidden - reference).abs().max())}  # fmt: skip


def run_restore_hf_benchmark(hf_dir: Path, repeats: int = 3, progress: Any = None) -> dict[str, Any]:
    """Set up (publish the folder, write the baselines' files), run ``repeats`` probes per path."""
    import torch
    import transformers

    from warmstart.bench.report import environment
    from warmstart.infra.errors import WarmstartError
    from warmstart.snapshot.hf import publish_hf_folder
    from warmstart.snapshot.stores import open_store_url

    say = progress or (lambda _line: None)
    root = Path(tempfile.mkdtemp(prefix="warmstart-bench-restore-hf-"))
    try:
        manifest = publish_hf_folder(open_store_url(f"file://{root / 'store'}"), "hf", "v1", Path(hf_dir),
                                     outputs=["last_hidden_state"], show_progress=False)  # fmt: skip
        (root / "manifest.json").write_bytes(manifest.to_json())
        model = transformers.AutoModel.from_pretrained(str(hf_dir)).eval()
        torch.save(model.state_dict(), root / "model.pt")
        with torch.inference_mode():
            torch.save(model(**_inputs()).last_hidden_state, root / "reference.pt")
        tiny_config = _tiny_config()
        tiny = getattr(transformers, tiny_config["architectures"][0])(transformers.AutoConfig.for_model(**tiny_config))
        tiny.save_pretrained(root / "tiny")
        torch.save(tiny.state_dict(), root / "tiny.pt")
        del model, tiny
        spec = {"hf_dir": str(hf_dir), "manifest_path": str(root / "manifest.json"), "torch_path": str(root / "model.pt"),
                "reference_path": str(root / "reference.pt"), "tiny_dir": str(root / "tiny"), "tiny_pt": str(root / "tiny.pt")}  # fmt: skip
        samples: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
        for repeat in range(1, repeats + 1):
            for path in PATHS:
                done = subprocess.run([sys.executable, "-m", "warmstart.bench.restore_hf", json.dumps({**spec, "path": path})],
                                      capture_output=True, text=True, timeout=600, env=dict(os.environ))  # fmt: skip
                if done.returncode != 0:
                    raise WarmstartError(f"probe {path} failed:\n{done.stderr[-3000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                if result["max_abs_error"] > 1e-3:
                    raise WarmstartError(f"probe {path} restored a model that answers differently: {result}")
                samples[path].append(result)
                say(f"[{repeat}/{repeats}] {path}: first {result['first_s'] * 1e3:.1f} ms, again {result['again_s'] * 1e3:.1f} ms")
        medians = {p: {k: statistics.median(s[k] for s in samples[p]) for k in ("first_s", "again_s")} for p in PATHS}
        ratios = {
            f"{p}/warmstart {k}": medians[p][k] / medians["warmstart"][k] for p in PATHS[1:] for k in ("first_s", "again_s")
        }
        return {"hf_dir": str(hf_dir), "size_bytes": manifest.weights.size_bytes, "medians": medians, "ratios": ratios,
                "samples": samples, "environment": environment(),
                "target": {"ratio": "from_pretrained/warmstart again_s", "bound": 3.0,
                           "met": ratios["from_pretrained/warmstart again_s"] >= 3.0}}  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


def restore_hf_tables(result: dict[str, Any]) -> list[Any]:
    from warmstart.bench.report import make_table

    m = result["medians"]
    rows = [
        [p, f"{m[p]['first_s'] * 1e3:.1f}", f"{m[p]['again_s'] * 1e3:.1f}",
         f"{m[p]['first_s'] / m['warmstart']['first_s']:.1f}×", f"{m[p]['again_s'] / m['warmstart']['again_s']:.1f}×"]
        for p in PATHS
    ]  # fmt: skip
    t = result["target"]
    return [make_table(
        f"Restore of {result['hf_dir']} ({result['size_bytes'] / 2**20:.1f} MiB), fresh processes, medians",
        ["path", "first load (ms)", "loaded before (ms)", "÷ warmstart (first)", "÷ warmstart (before)"],
        rows,
        caption=f"target: {t['ratio']} ≥ {t['bound']:g}: {'met' if t['met'] else 'NOT met'}",
    )]  # fmt: skip


if __name__ == "__main__":
    from warmstart.bench.report import probe_main

    sys.exit(probe_main("restore_hf", probe, sys.argv[1:]))
