"""Per-process preparation and the device setting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from warmstart.infra.errors import SettingsError
from warmstart.snapshot import process


def test_prepare_process_warms_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(process, "_prepared", set())
    monkeypatch.setattr(process, "_warm_up", lambda device: calls.append(str(device)))
    process.prepare_process()
    process.prepare_process()
    process.prepare_process("cpu")
    assert calls == ["cpu"]


def test_prepare_process_really_runs_the_restore_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "_prepared", set())
    process.prepare_process(None)
    assert process._prepared == {"cpu"}
    process.prepare_process(torch.device("cpu"))
    assert process._prepared == {"cpu"}


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process.resolve_device("auto") == torch.device("cpu")
    assert process.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(SettingsError, match="CUDA is not available"):
        process.resolve_device("cuda")
    with pytest.raises(SettingsError, match="not supported"):
        process.resolve_device("meta")
    with pytest.raises(SettingsError, match="not a device"):
        process.resolve_device("gpu please")


def test_resolve_device_auto_picks_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert process.resolve_device("auto") == torch.device("cuda")


def test_prepare_process_leaves_the_global_rng_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "_prepared", set())
    state = torch.random.get_rng_state()
    process.prepare_process()
    assert torch.equal(torch.random.get_rng_state(), state)


def test_prepare_architectures_imports_and_builds_every_registered_one() -> None:
    """In a fresh process: after it, the HF architecture's modules are imported (no request
    pays that), and a second call prepares nothing again."""
    pytest.importorskip("transformers")
    code = (
        "import sys, json\n"
        "from warmstart.snapshot.process import prepare_architectures\n"
        "first = prepare_architectures()\n"
        "print(json.dumps([sorted(first), 'transformers.models.bert.modeling_bert' in sys.modules,"
        " prepare_architectures()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    prepared, bert_imported, again = json.loads(out.stdout.strip().splitlines()[-1])
    assert "warmstart.snapshot.hf:build_hf_model" in prepared
    assert "warmstart.snapshot.examples:build_recsys_model" in prepared
    assert bert_imported and again == {}
