"""Restore: safetensors file -> module whose weights view a copy-on-write mapping of it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model

from warmstart.infra.errors import RestoreError, SafetensorsHeaderError, UnregisteredArchitectureError
from warmstart.snapshot import restore as restore_mod
from warmstart.snapshot.examples import recsys_example, transformer_example
from warmstart.snapshot.header import read_header_file
from warmstart.snapshot.manifest import (
    ArchitectureSpec,
    GoldenInfo,
    InputSpec,
    Manifest,
    WeightsInfo,
    parse_manifest,
)
from warmstart.snapshot.names import GOLDEN_FILE, WEIGHTS_FILE
from warmstart.snapshot.restore import map_tensors, module_nbytes, restore_model, restore_weights

RECSYS = recsys_example("live-events", scale=0.25)  # ~0.5 MB: fast, but the real family
ENCODER = transformer_example(0.5)


def make_manifest(path: Path, architecture: ArchitectureSpec, inputs: tuple[InputSpec, ...]) -> Manifest:
    """A valid manifest for ``path`` (checked by a parse round trip)."""
    header_bytes, tensors, _ = read_header_file(path)
    data = path.read_bytes()
    manifest = Manifest(
        model="m",
        version="v1",
        created_at="2026-11-27T00:00:00Z",
        architecture=architecture,
        weights=WeightsInfo(
            file=WEIGHTS_FILE,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            header_bytes=header_bytes,
            tensors=tuple(sorted(tensors.values(), key=lambda t: t.offsets)),
        ),
        inputs=inputs,
        golden=GoldenInfo(GOLDEN_FILE, 1, "0" * 64, tuple(s.name for s in inputs), ("output",), 0.0, 0.0),
    )
    return parse_manifest(manifest.to_json())


def publish(tmp_path: Path, example, name: str = "model.safetensors") -> tuple[torch.nn.Module, Path, Manifest]:
    module = example.build()
    path = tmp_path / name
    save_model(module, str(path))
    return module, path, make_manifest(path, example.architecture, example.inputs)


def write_raw(path: Path, header: dict, data: bytes, header_len: int | None = None) -> Path:
    """A safetensors file exactly as given: no padding, any header length claimed."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


def mapping_of(path: Path) -> tuple[int, int]:
    """(start, end) of the mapping of ``path`` in this process, from /proc/self/maps."""
    spans = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            spans.append((start, end))
    assert spans, f"{path} is not mapped"
    return min(s for s, _ in spans), max(e for _, e in spans)


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("example", [RECSYS, ENCODER], ids=["recsys", "encoder"])
def test_round_trip_gives_identical_outputs(tmp_path: Path, example) -> None:
    original, path, manifest = publish(tmp_path, example)
    restored = restore_model(path, manifest)
    inputs = example.golden_inputs(seed=3, batch=3)
    with torch.inference_mode():
        assert torch.equal(restored(**inputs), original(**inputs))
    assert not restored.training and all(not m.training for m in restored.modules())
    assert all(not p.requires_grad for p in restored.parameters())
    assert not any(t.is_meta for t in (*restored.parameters(), *restored.buffers()))
    for name, tensor in original.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name


def test_weights_view_the_mapping_without_copying(tmp_path: Path) -> None:
    _, path, manifest = publish(tmp_path, RECSYS)
    restored = restore_model(path, manifest)
    start, end = mapping_of(path)
    data_start = 8 + manifest.weights.header_bytes
    for name, entry in {t.name: t for t in manifest.weights.tensors}.items():
        tensor = restored.get_parameter(name)
        assert start <= tensor.data_ptr() < end, name
        assert tensor.data_ptr() == start + data_start + entry.offsets[0], name


def test_mapping_is_shared_with_the_file_and_copy_on_write(tmp_path: Path) -> None:
    _, path, manifest = publish(tmp_path, RECSYS)
    restored = restore_model(path, manifest)
    bias = restored.item_bias
    entry = next(t for t in manifest.weights.tensors if t.name == "item_bias")
    # Bytes written to the file show through: the parameter *is* the page cache, not a copy.
    # (The cache never does this: its files are immutable. Here it proves zero-copy.)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, struct.pack("<f", 42.5), 8 + manifest.weights.header_bytes + entry.offsets[0])
    finally:
        os.close(fd)
    assert bias[0].item() == 42.5
    # Writes to the tensor stay private: the file keeps its bytes.
    before = path.read_bytes()
    with torch.no_grad():
        restored.item_bias.fill_(-1.0)
    assert path.read_bytes() == before


def test_non_persistent_buffers_are_computed_not_loaded(tmp_path: Path) -> None:
    original, path, manifest = publish(tmp_path, ENCODER)
    assert "positions" not in {t.name for t in manifest.weights.tensors}
    restored = restore_model(path, manifest)
    assert not restored.positions.is_meta
    assert torch.equal(restored.positions, original.positions)
    _, path2, manifest2 = publish(tmp_path, RECSYS, "recsys.safetensors")
    recsys = restore_model(path2, manifest2)
    assert torch.equal(recsys.recency, RECSYS.build().recency)


def test_tied_weights_stay_tied(tmp_path: Path) -> None:
    _, path, manifest = publish(tmp_path, RECSYS)
    names = {t.name for t in manifest.weights.tensors}
    assert "item_embedding.weight" in names and "score.weight" not in names  # stored once
    restored = restore_model(path, manifest)
    assert restored.score.weight is restored.item_embedding.weight
    assert len(list(restored.parameters())) == len(names)


def test_module_nbytes_counts_what_the_module_holds(tmp_path: Path) -> None:
    """Every weight views one mapping of the whole file (header included): counted once, with
    the non-persistent buffer that was computed for real."""
    _, path, manifest = publish(tmp_path, RECSYS)
    restored = restore_model(path, manifest)
    assert module_nbytes(restored) == manifest.weights.size_bytes + restored.recency.numel() * 4


def test_module_nbytes_counts_computed_buffers(tmp_path: Path) -> None:
    _, path, manifest = publish(tmp_path, ENCODER)
    restored = restore_model(path, manifest)
    positions = restored.positions.numel() * 4
    assert positions > 0
    assert module_nbytes(restored) == manifest.weights.size_bytes + positions


class _Holder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        big = torch.zeros(1000)
        self.register_buffer("window", big[:10], persistent=False)  # holds all of big
        self.a = torch.nn.Parameter(torch.zeros(4))
        self.b = torch.nn.Parameter(torch.zeros(8))
        self.b.data = self.a.data.new_empty(0).set_(self.a.untyped_storage(), 0, (2,))  # views a
        self.stash = torch.ones(25, dtype=torch.float64)  # a plain attribute still holds memory
        self.ghost = torch.nn.Parameter(torch.zeros(10**6, device="meta"))  # holds nothing


def test_module_nbytes_counts_storages_not_views() -> None:
    """A view of a large tensor keeps the whole storage alive; two views of one are one."""
    holder = _Holder()
    assert module_nbytes(holder) == 1000 * 4 + 4 * 4 + 25 * 8
    assert module_nbytes(torch.nn.Linear(2, 3)) == (6 + 3) * 4


def test_restore_without_populate_and_without_manifest(tmp_path: Path) -> None:
    original, path, _ = publish(tmp_path, ENCODER)
    restored = restore_weights(path, ENCODER.architecture, populate=False)
    inputs = ENCODER.golden_inputs()
    with torch.inference_mode():
        assert torch.equal(restored(**inputs), original(**inputs))


def test_populate_falls_back_on_old_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    import errno

    calls: list[int] = []

    def old_kernel(address: int, length: int, advice: int) -> int:
        calls.append(advice)
        if advice == restore_mod._MADV_POPULATE_READ:
            ctypes.set_errno(errno.EINVAL)
            return -1
        return 0

    monkeypatch.setattr(restore_mod, "_madvise", old_kernel)
    original, path, manifest = publish(tmp_path, RECSYS)
    restored = restore_model(path, manifest, populate=True)
    assert calls == [restore_mod._MADV_POPULATE_READ, restore_mod._MADV_WILLNEED]
    inputs = RECSYS.golden_inputs()
    assert torch.equal(restored(**inputs), original(**inputs))


def test_populate_reports_io_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    import errno

    def failing(address: int, length: int, advice: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(restore_mod, "_madvise", failing)
    _, path, manifest = publish(tmp_path, RECSYS)
    with pytest.raises(RestoreError, match="fetch it again"):
        restore_model(path, manifest)


def test_unaligned_tensor_is_copied_alone(tmp_path: Path) -> None:
    floats = torch.arange(4, dtype=torch.float32)
    header = {
        "odd": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "f": {"dtype": "F32", "shape": [2, 2], "data_offsets": [3, 19]},
        "g": {"dtype": "F32", "shape": [1], "data_offsets": [19, 23]},
    }
    path = tmp_path / "odd.safetensors"
    raw_len = len(json.dumps(header).encode())
    # Pad the header with spaces so that the data section starts 8-aligned.
    header_json = json.dumps(header).encode() + b" " * (-(8 + raw_len) % 8)
    path.write_bytes(
        struct.pack("<Q", len(header_json)) + header_json + b"\x01\x02\x03" + floats.numpy().tobytes() + struct.pack("<f", 7.0)
    )
    state = map_tensors(path)
    assert state["odd"].tolist() == [1, 2, 3]
    assert torch.equal(state["f"], floats.reshape(2, 2))
    assert state["g"].item() == 7.0  # offset 19 is not 4-aligned either: copied
    storage = state["odd"].untyped_storage()
    assert storage.nbytes() == path.stat().st_size  # the view shares the whole map
    assert state["f"].untyped_storage().data_ptr() != storage.data_ptr()


def test_zero_sized_and_scalar_tensors(tmp_path: Path) -> None:
    header = {
        "empty": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]},
        "scalar": {"dtype": "F64", "shape": [], "data_offsets": [0, 8]},
    }
    header_json = json.dumps(header).encode()
    header_json += b" " * (-(8 + len(header_json)) % 8)
    path = tmp_path / "z.safetensors"
    path.write_bytes(struct.pack("<Q", len(header_json)) + header_json + struct.pack("<d", 2.5))
    state = map_tensors(path)
    assert state["empty"].shape == (0, 3)
    assert state["scalar"].shape == () and state["scalar"].item() == 2.5


# --- refusals ---------------------------------------------------------------------------------


def test_unregistered_factory_is_refused_before_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "warmstart_boobytrap.py").write_text("raise ImportError('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _, path, manifest = publish(tmp_path, RECSYS)
    evil = dataclasses.replace(manifest, architecture=ArchitectureSpec("warmstart_boobytrap:build", {}))
    with pytest.raises(UnregisteredArchitectureError, match="warmstart_boobytrap:build"):
        restore_model(path, evil)
    assert "warmstart_boobytrap" not in sys.modules
    # Control: once allowed, it *is* imported (and its failure is a RestoreError).
    with pytest.raises(RestoreError, match="imported!"):
        restore_model(path, evil, allowed_architectures=["warmstart_boobytrap:build"])


def test_truncated_file(tmp_path: Path) -> None:
    _, path, manifest = publish(tmp_path, RECSYS)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SafetensorsHeaderError):
        restore_model(path, manifest)
    with pytest.raises(SafetensorsHeaderError, match="outside"):
        restore_weights(path, RECSYS.architecture)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(SafetensorsHeaderError, match="too short"):
        restore_weights(path, RECSYS.architecture)


def test_huge_header_length(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "h.safetensors", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, header_len=2**62)
    with pytest.raises(SafetensorsHeaderError, match="header claims"):
        restore_weights(path, RECSYS.architecture)


def test_overlapping_offsets(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    path = write_raw(tmp_path / "o.safetensors", header, b"\0" * 12)
    with pytest.raises(SafetensorsHeaderError, match="overlaps"):
        restore_weights(path, RECSYS.architecture)


def test_header_disagreeing_with_manifest(tmp_path: Path) -> None:
    _, path, manifest = publish(tmp_path, RECSYS)
    entries = list(manifest.weights.tensors)
    i = next(i for i, t in enumerate(entries) if t.name == "item_bias")
    entries[i] = dataclasses.replace(entries[i], dtype="I32")  # same bytes, another dtype
    lying = dataclasses.replace(manifest, weights=dataclasses.replace(manifest.weights, tensors=tuple(entries)))
    with pytest.raises(SafetensorsHeaderError, match="item_bias"):
        restore_model(path, lying)
    n = entries[i].shape[0]
    entries[i] = dataclasses.replace(entries[i], dtype="F32", shape=(n // 2, 2) if n % 2 == 0 else (1, n))
    lying = dataclasses.replace(manifest, weights=dataclasses.replace(manifest.weights, tensors=tuple(entries)))
    with pytest.raises(SafetensorsHeaderError, match="item_bias"):
        restore_model(path, lying)


def test_tensor_outside_the_file_is_refused(tmp_path: Path) -> None:
    _, path, manifest = publish(tmp_path, RECSYS)
    tensors = {t.name: t for t in manifest.weights.tensors}
    bad = dataclasses.replace(tensors["item_bias"], offsets=(10**9, 10**9 + tensors["item_bias"].nbytes))
    with pytest.raises(SafetensorsHeaderError, match="item_bias"):
        map_tensors(path, {**tensors, "item_bias": bad})


def test_state_dict_mismatch_names_the_keys(tmp_path: Path) -> None:
    _, path, _ = publish(tmp_path, RECSYS)
    deeper = dict(RECSYS.architecture.kwargs, num_layers=RECSYS.architecture.kwargs["num_layers"] + 1)
    with pytest.raises(RestoreError) as caught:
        restore_weights(path, ArchitectureSpec(RECSYS.architecture.factory, deeper))
    message = str(caught.value)
    assert "missing" in message and "tower.2.weight" in message and "Republish" in message


def test_unexpected_keys_are_named(tmp_path: Path) -> None:
    _, path, _ = publish(tmp_path, ENCODER)
    kwargs = dict(ENCODER.architecture.kwargs)
    kwargs["num_layers"] -= 1
    with pytest.raises(RestoreError) as caught:
        restore_weights(path, ArchitectureSpec(ENCODER.architecture.factory, kwargs))
    last = kwargs["num_layers"]
    assert "unexpected" in str(caught.value) and f"encoder.layers.{last}." in str(caught.value)


def test_shape_mismatch_is_a_restore_error(tmp_path: Path) -> None:
    _, path, _ = publish(tmp_path, RECSYS)
    wider = dict(RECSYS.architecture.kwargs, hidden=RECSYS.architecture.kwargs["hidden"] * 2)
    with pytest.raises(RestoreError, match="size mismatch"):
        restore_weights(path, ArchitectureSpec(RECSYS.architecture.factory, wider))


def test_failing_factory_is_a_restore_error(tmp_path: Path) -> None:
    _, path, _ = publish(tmp_path, RECSYS)
    with pytest.raises(RestoreError, match="num_items"):
        restore_weights(path, ArchitectureSpec(RECSYS.architecture.factory, {"num_items": 0}))
    with pytest.raises(RestoreError, match="unexpected keyword"):
        restore_weights(path, ArchitectureSpec(RECSYS.architecture.factory, {"bogus": 1}))


class _TiedBeforeConversion(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        shared = torch.nn.Parameter(torch.ones(3))
        self.a = shared  # registered twice while still on the CPU
        self.b = shared


def test_meta_build_keeps_ties_made_before_conversion() -> None:
    with restore_mod.parameters_on_meta():
        module = _TiedBeforeConversion()
    assert module.a.is_meta and module.a is module.b


def test_meta_build_leaves_other_threads_and_later_builds_alone() -> None:
    with restore_mod.parameters_on_meta():
        on_meta = torch.nn.Linear(2, 2)
    assert on_meta.weight.is_meta
    assert not torch.nn.Linear(2, 2).weight.is_meta
    import threading

    seen: list[bool] = []
    with restore_mod.parameters_on_meta():
        thread = threading.Thread(target=lambda: seen.append(torch.nn.Linear(2, 2).weight.is_meta))
        thread.start()
        thread.join()
    assert seen == [False]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_restore_to_cuda(tmp_path: Path) -> None:
    original, path, manifest = publish(tmp_path, RECSYS)
    restored = restore_model(path, manifest, device="cuda")
    assert all(p.is_cuda for p in restored.parameters())
    assert restored.score.weight is restored.item_embedding.weight
    # On the device each weight has its own storage (the file's mapping is released); the
    # tied one counts once, the computed buffer too.
    weights = sum(t.nbytes for t in manifest.weights.tensors)
    assert module_nbytes(restored) == weights + restored.recency.numel() * 4
    inputs = RECSYS.golden_inputs()
    with torch.inference_mode():
        out = restored(**{k: v.cuda() for k, v in inputs.items()}).cpu()
    torch.testing.assert_close(out, original(**inputs))


def _rss_kib() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


def test_populated_weights_are_page_cache_not_private_copies(tmp_path: Path) -> None:
    example = recsys_example("short-form", scale=0.5)  # ~4 MB of weights
    _, path, manifest = publish(tmp_path, example)
    weights_kib = sum(t.nbytes for t in manifest.weights.tensors) // 1024
    path.read_bytes()  # page-cached, as the cache leaves it
    restore_model(path, manifest)  # a first restore: torch's one-time imports would blur the numbers
    before = _rss_kib()
    restored = restore_model(path, manifest, populate=True)
    after = _rss_kib()
    assert after["RssFile"] - before["RssFile"] >= 0.9 * weights_kib  # resident: populated
    assert after["RssAnon"] - before["RssAnon"] < 0.25 * weights_kib  # and not copied
    del restored


def test_tie_restored_from_whichever_name_the_file_kept(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    original = RECSYS.build(seed=1)
    state = {k: v.contiguous() for k, v in original.state_dict().items() if k != "item_embedding.weight"}
    path = tmp_path / "other-name.safetensors"
    save_file(state, str(path))
    restored = restore_weights(path, RECSYS.architecture)
    assert restored.item_embedding.weight is restored.score.weight
    assert torch.equal(restored.item_embedding.weight, original.item_embedding.weight)


def test_restores_of_one_architecture_reuse_its_skeleton_but_share_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _, path, manifest = publish(tmp_path, ENCODER)
    builds = []
    real_build = restore_mod._build_on_meta
    monkeypatch.setattr(restore_mod, "_build_on_meta", lambda *a: builds.append(a) or real_build(*a))
    monkeypatch.setattr(restore_mod, "_skeletons", {})
    first = restore_model(path, manifest)
    second = restore_model(path, manifest)
    assert len(builds) == 1  # the second restore copied the skeleton instead of building
    computed = restore_mod.non_persistent_buffers(first)
    assert computed  # the encoder's positional table: real, computed at build
    name = sorted(computed)[0]
    first_buffer, second_buffer = first.get_buffer(name), second.get_buffer(name)
    assert first_buffer.data_ptr() != second_buffer.data_ptr()  # copied, not shared
    for (n1, p1), (n2, p2) in zip(first.named_parameters(), second.named_parameters()):
        assert n1 == n2 and p1 is not p2  # both view the file, through their own Parameters
    ids = torch.randint(0, ENCODER.architecture.kwargs["vocab_size"], (2, 5))
    mask = torch.ones(2, 5, dtype=torch.int64)
    with torch.inference_mode():
        torch.testing.assert_close(first(input_ids=ids, attention_mask=mask), second(input_ids=ids, attention_mask=mask))


def _structure(module: torch.nn.Module) -> list[tuple]:
    """What a copy must reproduce: every submodule's name, type and mode, every tensor's
    name, shape, dtype and device, and which parameters are one object."""
    first_name: dict[int, str] = {}
    tensors = []
    for name, t in (*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)):
        tensors.append((name, tuple(t.shape), t.dtype, t.device.type, first_name.setdefault(id(t), name)))
    return [(n, type(m).__name__, m.training) for n, m in module.named_modules()] + tensors


@pytest.mark.parametrize("example", [RECSYS, ENCODER], ids=["recsys", "encoder"])
def test_clone_module_copies_like_deepcopy_and_shares_nothing(example) -> None:  # type: ignore[no-untyped-def]
    import copy

    with restore_mod.parameters_on_meta():
        module = example.build().eval()
    clone = restore_mod.clone_module(module)
    assert _structure(clone) == _structure(copy.deepcopy(module)) == _structure(module)
    for (_, a), (_, b) in zip(module.named_modules(), clone.named_modules()):
        assert a is not b and a._parameters is not b._parameters and a._forward_hooks is not b._forward_hooks
    for a, b in zip(module.parameters(), clone.parameters()):
        assert a is not b
    clone.train()  # changing the copy leaves the original alone
    assert not any(m.training for m in module.modules())


def test_clone_module_keeps_ties_hooks_and_defers_to_custom_copying() -> None:
    class Custom(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.copied = 0

        def __deepcopy__(self, memo):  # type: ignore[no-untyped-def]
            new = Custom()
            new.copied = self.copied + 1
            return new

    root = torch.nn.Module()
    root.a, root.b, root.custom = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), Custom()
    root.b.weight = root.a.weight  # tied
    seen = []
    root.a.register_forward_hook(lambda *args: seen.append(1))
    clone = restore_mod.clone_module(root)
    assert clone.b.weight is clone.a.weight and clone.a.weight is not root.a.weight
    assert clone.custom.copied == 1  # its own __deepcopy__ ran
    clone.a(torch.ones(1, 2))
    assert seen == [1] and len(clone.a._forward_hooks) == 1


def test_modules_with_their_own_loading_get_load_state_dict(tmp_path: Path) -> None:
    # BatchNorm customises _load_from_state_dict: the direct assignment is not used for it,
    # and the restored module still answers like the saved one.
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).eval()
    assert not restore_mod._plain_loading(module) and restore_mod._plain_loading(torch.nn.Linear(2, 2))
    state = {k: v.clone() for k, v in module.state_dict().items()}
    with restore_mod.parameters_on_meta():
        target = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    restore_mod._assign(target, state, "test:factory")
    x = torch.randn(3, 4)
    with torch.inference_mode():
        torch.testing.assert_close(target(x), module(x))
    assert not target.training and not any(p.requires_grad for p in target.parameters())


def test_clone_module_copies_a_hugging_face_model_like_deepcopy() -> None:
    import copy

    pytest.importorskip("transformers")
    from warmstart.snapshot.hf import build_hf_model

    with restore_mod.parameters_on_meta():
        module = build_hf_model(**build_hf_model.warmup_kwargs).eval()  # type: ignore[attr-defined]
    clone = restore_mod.clone_module(module)
    assert _structure(clone) == _structure(copy.deepcopy(module))
    assert clone.config is not module.config and clone.config.to_dict() == module.config.to_dict()
