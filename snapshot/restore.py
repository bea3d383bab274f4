"""Restore a module from a safetensors snapshot by memory-mapping it: zero-copy, no pickle.

The steps, for a file the cache has already verified (size and sha256 are checked at fetch
time, by the cache, not here: hashing 500 MB would cost more than everything below):

1. The architecture factory is checked against the allow-list before anything is imported.
2. The file is mapped once, copy-on-write (``MAP_PRIVATE``): the cache's file can never be
   modified through the mapping, and a stray in-place write to a weight only dirties a
   private copy of that page.
3. Every tensor is a *view* of the mapping at its offsets (one shared storage, no copy). A
   tensor whose offset is not aligned for its dtype is copied, alone.
4. The module is built with its parameters (and persistent buffers) on the ``meta`` device:
   nothing is allocated or initialised for them, while non-persistent buffers computed in
   ``__init__`` (positional encodings, masks) keep their real values.
5. ``load_state_dict(assign=True, strict=True)`` makes the views the parameters; weights that
   were tied at build time (saved once by safetensors) are tied again.
6. ``MADV_POPULATE_READ`` maps every page before returning, so the first inference takes no
   page faults (and a cold file is read at the disk's sequential speed).
7. On a GPU, ``.to(device)`` copies the weights over; the mapping is then released.

A sharded snapshot (several safetensors files, manifest format version 2) is restored the same
way: each shard is mapped on its own, and the module is built from the union of their views.

Nothing here executes pickle: ``torch.load`` is never used.
"""

from __future__ import annotations

import copy
import ctypes
import errno
import json
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart.infra.errors import RestoreError, SafetensorsHeaderError
from warmstart.snapshot import header, registry
from warmstart.snapshot.manifest import ArchitectureSpec, Manifest, TensorEntry, WeightsFile

#: safetensors dtype codes -> torch dtypes.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16, "BF16": torch.bfloat16,
    "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32,
    "I64": torch.int64, "U64": torch.uint64, "F64": torch.float64,
}  # fmt: skip

_MADV_WILLNEED = 3
_MADV_POPULATE_READ = 22  # Linux 5.14+
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MAX_KEYS_IN_MESSAGE = 8


# --- public API -----------------------------------------------------------------------------


WeightsPaths = Path | str | Sequence[Path | str]


def restore_model(
    weights_path: WeightsPaths,
    manifest: Manifest,
    *,
    device: str | torch.device = "cpu",
    populate: bool = True,
    allowed_architectures: Iterable[str] = (),
) -> nn.Module:
    """Restore the module of a verified snapshot.

    The file's header must agree exactly with the manifest's tensor index. Its sha256 is *not*
    checked here: the cache verifies it at fetch time, before the atomic rename that makes the
    file visible, and cached files are never modified in place.

    Args:
        weights_path: the local ``model.safetensors``; for a sharded snapshot, the folder
            holding its shard files (what :attr:`LocalSnapshot.weights_path
            <warmstart.snapshot.cache.LocalSnapshot.weights_path>` gives), or the shard files
            in the manifest's order. A folder works for a single file too.
        manifest: the snapshot's validated manifest.
        device: where the module should live (``"cpu"``, ``"cuda"``, ``"cuda:1"``…).
        populate: make every page resident before returning (see :func:`restore_weights`).
        allowed_architectures: factories allowed on top of the entry-point group.

    Returns:
        The module, in eval mode, with ``requires_grad`` off everywhere.

    Raises:
        UnregisteredArchitectureError: the factory is not registered (nothing was imported).
        SafetensorsHeaderError: the header is malformed or disagrees with the manifest.
        RestoreError: the factory failed, or its state dict does not match the file.
    """
    files = weight_files(weights_path, manifest)
    module = restore_weights(
        [path for path, _ in files],
        manifest.architecture,
        device=device,
        populate=populate,
        allowed_architectures=allowed_architectures,
        tensors=[header.check_file(path, entry) for path, entry in files],
        skip_keys=manifest.skip_keys,
    )
    if manifest.outputs:
        from warmstart.snapshot.outputs import SelectOutputs

        return SelectOutputs(module, manifest.outputs)
    return module


def weight_files(weights_path: WeightsPaths, manifest: Manifest) -> list[tuple[Path, WeightsFile]]:
    """The local file of each of the manifest's weight files, paired with its entry.

    Args:
        weights_path: a file (single-file snapshots), the folder holding the snapshot's files
            (named as in the manifest), or a list of files in the manifest's order.

    Raises:
        RestoreError: a sharded snapshot given one file, or a list of another length.
    """
    entries = manifest.weights.files
    if isinstance(weights_path, (str, Path)):
        path = Path(weights_path)
        if path.is_dir():
            return [(path / entry.file, entry) for entry in entries]
        if manifest.weights.shards:
            raise RestoreError(
                f"{manifest.model}/{manifest.version} is sharded into {len(entries)} files; restore "
                f"it from the folder that holds them (the cache entry), not from {path.name}"
            )
        return [(path, entries[0])]
    paths = [Path(p) for p in weights_path]
    if len(paths) != len(entries):
        raise RestoreError(
            f"{manifest.model}/{manifest.version} has {len(entries)} weight files "
            f"{[e.file for e in entries][:8]}, but {len(paths)} paths were given"
        )
    return list(zip(paths, entries))


def restore_weights(
    weights_path: WeightsPaths,
    architecture: ArchitectureSpec,
    *,
    device: str | torch.device = "cpu",
    populate: bool = True,
    allowed_architectures: Iterable[str] = (),
    tensors: dict[str, TensorEntry] | Sequence[dict[str, TensorEntry]] | None = None,
    skip_keys: Iterable[str] = (),
) -> nn.Module:
    """Build ``architecture`` with its weights viewing a copy-on-write mapping of the file
    (or of each file, for shards).

    Args:
        weights_path: a safetensors file, or a list of files (the shards of one model, each
            holding other tensors) whose union is the state dict.
        architecture: the factory (must be registered) and its kwargs.
        device: where the module should live; anything but CPU gets a copy of the weights.
        populate: make every page of the mapping resident before returning, so that the
            first inference takes no page faults. Costs ~nothing for a page-cached file and
            about one sequential read of the file for a cold one.
        allowed_architectures: factories allowed on top of the entry-point group.
        tensors: the file's validated tensor index, when the caller already has it
            (:func:`restore_model` passes what ``check_file`` returned; a list of them, one
            per file, for a list of files); parsed and validated from the file otherwise.
        skip_keys: tensors of the file that are non-persistent buffers of the module (the
            manifest's ``skip_keys``, rule ``non_persistent_buffers``): left unloaded, the
            module keeps the values it computed. Each must really be one (else RestoreError).

    Returns:
        The module, in eval mode, with ``requires_grad`` off everywhere.

    Raises:
        UnregisteredArchitectureError: the factory is not registered (nothing was imported).
        SafetensorsHeaderError: the header is malformed, a tensor lies outside the file, or
            two files hold the same tensor.
        RestoreError: the factory failed or did not return a module, its state dict does not
            match the file (missing or unexpected keys, other shapes), or the file could not
            be read.
    """
    factory = registry.resolve_factory(architecture.factory, allowed_architectures)
    paths = [Path(weights_path)] if isinstance(weights_path, (str, Path)) else [Path(p) for p in weights_path]
    indexes: list[dict[str, TensorEntry] | None]
    if tensors is None:
        indexes = [None] * len(paths)
    else:
        indexes = [tensors] if isinstance(tensors, dict) else list(tensors)
    if not paths or len(indexes) != len(paths):
        raise ValueError(f"{len(paths)} weight files (at least one) but {len(indexes)} tensor indexes")
    mapped: list[tuple[torch.UntypedStorage, str]] = []
    state: dict[str, torch.Tensor] = {}
    holder: dict[str, str] = {}
    for path, index in zip(paths, indexes):
        storage, part = _map(path, index)
        mapped.append((storage, str(path)))
        for name in part:
            if name in holder:
                raise SafetensorsHeaderError(
                    f"tensor {name!r} is in both {holder[name]} and {path.name}: the shards of one "
                    "model must hold distinct tensors; re-save the model"
                )
            holder[name] = path.name
        state.update(part)
    # Populate the pages on another thread while this one builds the module on meta: the
    # madvise call releases the GIL, and assigning views does not touch the pages.
    populating = _Populate(mapped) if populate else None
    try:
        module = _skeleton(factory, architecture)
        _assign(module, state, architecture.factory, frozenset(skip_keys))
    finally:
        if populating is not None:
            populating.join()
    target = torch.device(device)
    if target.type != "cpu":
        module.to(target, non_blocking=True)
        if target.type == "cuda":
            torch.cuda.synchronize(target)
    return module


def map_tensors(
    weights_path: Path, tensors: dict[str, TensorEntry] | None = None, *, populate: bool = True
) -> dict[str, torch.Tensor]:
    """Map a safetensors file copy-on-write and return one tensor per entry, viewing the map.

    All the views share one storage, the mapping, which is unmapped when the last of them is
    freed. An entry whose offset is not aligned for its dtype is copied instead.

    Raises:
        SafetensorsHeaderError: the header is malformed, or an entry lies outside the file.
        RestoreError: the file cannot be opened, mapped or (with ``populate``) read.
    """
    storage, state = _map(weights_path, tensors)
    if populate:
        populate_pages(storage.data_ptr(), storage.nbytes(), what=str(weights_path))
    return state


class _Populate(threading.Thread):
    """:func:`populate_pages` on a thread, for each mapping in turn; :meth:`join` re-raises
    what it raised."""

    def __init__(self, mapped: list[tuple[torch.UntypedStorage, str]]) -> None:
        super().__init__(name="warmstart-populate", daemon=True)
        self.mapped = mapped
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            for storage, what in self.mapped:
                populate_pages(storage.data_ptr(), storage.nbytes(), what=what)
        except BaseException as e:  # noqa: BLE001 - handed to the joining thread
            self.error = e

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


def _map(
    weights_path: Path, tensors: dict[str, TensorEntry] | None
) -> tuple[torch.UntypedStorage, dict[str, torch.Tensor]]:
    try:
        with open(weights_path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if tensors is None:
                header_bytes, tensors, _ = header.read_header(stream, size)
            else:
                prefix = stream.read(8)
                if len(prefix) < 8:
                    raise SafetensorsHeaderError(f"{weights_path.name} is too short for a safetensors header")
                (header_bytes,) = struct.unpack("<Q", prefix)
    except OSError as e:
        raise RestoreError(f"cannot open snapshot weights {weights_path}: {e}") from e

    data_start = 8 + header_bytes
    for entry in tensors.values():
        if data_start + entry.offsets[1] > size:
            raise SafetensorsHeaderError(
                f"tensor {entry.name!r} ends at byte {data_start + entry.offsets[1]} but "
                f"{weights_path.name} has {size}: the file changed after it was checked"
            )
    try:
        # shared=False maps MAP_PRIVATE (copy-on-write) from a read-only descriptor, which
        # torch closes at once; the mapping lives as long as a tensor views it.
        storage = torch.UntypedStorage.from_file(str(weights_path), shared=False, nbytes=size)
    except RuntimeError as e:
        raise RestoreError(f"cannot map snapshot weights {weights_path}: {e}") from e

    base = torch.empty(0, dtype=torch.uint8).set_(storage)
    state: dict[str, torch.Tensor] = {}
    for name, entry in tensors.items():
        dtype = TORCH_DTYPES[entry.dtype]
        start = data_start + entry.offsets[0]
        itemsize = dtype.itemsize
        if start % itemsize == 0:
            tensor = torch.empty(0, dtype=dtype).set_(storage, start // itemsize, entry.shape)
        else:  # not addressable as this dtype inside the map: copy this one tensor
            raw = base[start : data_start + entry.offsets[1]].clone()
            tensor = raw.view(dtype).reshape(entry.shape)
        state[name] = tensor
    return storage, state


def populate_pages(address: int, length: int, *, what: str = "mapping") -> None:
    """Make ``length`` bytes of a file mapping resident, without writing to it.

    ``MADV_POPULATE_READ`` maps every page in one call (read-faulting, so a private mapping
    shares the page cache instead of copying). It reads a cold file at sequential disk speed
    (the kernel's readahead works on the whole range) and costs well under a millisecond for
    a cached one. On kernels older than 5.14 it falls back to ``MADV_WILLNEED`` and reading
    one byte per page.

    Raises:
        RestoreError: the pages cannot be read (I/O error, or the file shrank under the map).
    """
    if length <= 0:
        return
    if _madvise(address, length, _MADV_POPULATE_READ) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.ENOSYS):
        raise RestoreError(
            f"cannot read the pages of {what}: {os.strerror(err)}; the file may have been "
            "truncated or the disk failed: delete it from the cache and fetch it again"
        )
    _madvise(address, length, _MADV_WILLNEED)
    buffer = (ctypes.c_uint8 * length).from_address(address)
    view = torch.frombuffer(buffer, dtype=torch.uint8)
    int(view[::_PAGE_BYTES].sum())  # one read per page


def module_nbytes(module: nn.Module) -> int:
    """Bytes of memory a module holds: every storage behind its parameters, its buffers
    (persistent or not) and plain tensor attributes of its submodules, each storage counted
    once, whole.

    Counting storages rather than tensors is what makes this the memory really held: a
    restored module's weights all view one mapping of the file (counted once, header
    included), tied weights share a storage, and a small view keeps all of its storage alive
    (a buffer sliced from a large table holds the whole table). Meta tensors hold nothing.
    Compare it with a memory budget after a restore.
    """
    seen: set[tuple[str, int]] = set()
    total = 0
    for tensor in _held_tensors(module):
        if tensor.is_meta:
            continue
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
            total += tensor.numel() * tensor.element_size()
            continue
        key = (str(storage.device), storage.data_ptr())
        if storage.nbytes() and key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def _held_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()
    for submodule in module.modules():  # tensors kept as plain attributes hold memory too
        yield from (v for v in vars(submodule).values() if isinstance(v, torch.Tensor))


# --- building on meta -----------------------------------------------------------------------

_meta_local = threading.local()
_meta_lock = threading.Lock()
_meta_users = 0
_original_register_parameter = nn.Module.register_parameter
_original_register_buffer = nn.Module.register_buffer


def _meta_register_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
    _original_register_parameter(self, name, param)
    if getattr(_meta_local, "depth", 0) and param is not None and not param.is_meta:
        # The factory allocated (but rarely touched) CPU memory; drop it for a meta tensor.
        # Initialisers that run after this (reset_parameters) then cost nothing. One CPU
        # parameter registered under two names becomes one meta parameter: the tie survives.
        converted: dict[int, tuple[nn.Parameter, nn.Parameter]] = _meta_local.converted
        if id(param) not in converted:
            meta = type(param)(param.to("meta"), requires_grad=param.requires_grad)
            meta.__dict__.update(param.__dict__)
            converted[id(param)] = (param, meta)  # holding param keeps its id unique
        self._parameters[name] = converted[id(param)][1]


def _meta_register_buffer(
    self: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True
) -> None:
    if getattr(_meta_local, "depth", 0) and persistent and tensor is not None and not tensor.is_meta:
        tensor = tensor.to("meta")  # comes from the file; non-persistent ones stay real
    _original_register_buffer(self, name, tensor, persistent)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Within this block, in this thread, modules register their parameters and persistent
    buffers on the ``meta`` device; non-persistent buffers keep their real values.

    (The idea of accelerate's ``init_empty_weights(include_buffers=False)``, thread-safe: the
    patch is installed while any thread is inside the block, and acts only for those.)
    """
    global _meta_users
    with _meta_lock:
        if _meta_users == 0:
            nn.Module.register_parameter = _meta_register_parameter  # type: ignore[method-assign]
            nn.Module.register_buffer = _meta_register_buffer  # type: ignore[method-assign]
        _meta_users += 1
    _meta_local.depth = getattr(_meta_local, "depth", 0) + 1
    if _meta_local.depth == 1:
        _meta_local.converted = {}
    try:
        yield
    finally:
        _meta_local.depth -= 1
        if _meta_local.depth == 0:
            _meta_local.converted = {}
        with _meta_lock:
            _meta_users -= 1
            if _meta_users == 0:
                nn.Module.register_parameter = _original_register_parameter  # type: ignore[method-assign]
                nn.Module.register_buffer = _original_register_buffer  # type: ignore[method-assign]


def _build_on_meta(factory: Any, architecture: ArchitectureSpec) -> nn.Module:
    try:
        with parameters_on_meta():
            module = factory(**architecture.kwargs)
    except Exception as e:  # noqa: BLE001 - any failure of foreign code becomes a RestoreError
        raise RestoreError(
            f"architecture {architecture.factory!r} failed to build with kwargs "
            f"{architecture.kwargs!r}: {type(e).__name__}: {e}. Republish the snapshot with an "
            "architecture spec this version of the factory accepts"
        ) from e
    if not isinstance(module, nn.Module):
        raise RestoreError(
            f"architecture {architecture.factory!r} returned {type(module).__name__}, not a "
            "torch.nn.Module"
        )
    return module


#: A module built on meta is kept per (factory, kwargs) and copied for the next restore of
#: the same architecture (:func:`clone_module`): copying costs a fraction of building. Only skeletons whose real tensors (non-persistent buffers) are small are kept,
#: so the cache holds no memory a budget should count (a positional table cached per kwargs
#: once outlived its models).
MAX_SKELETON_BYTES = 1024 * 1024
MAX_SKELETONS = 32
_skeletons: dict[tuple[str, str], nn.Module] = {}
_skeletons_lock = threading.Lock()


_ATOMIC = (int, float, bool, str, bytes, type(None))


def clone_module(module: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """``copy.deepcopy(module)``, without deepcopy's generic reconstruction of every module.

    Per module, the ``__dict__`` is copied entry by entry: submodules recursively, immutable
    values shared, empty dicts made new (most of a module's dicts are its empty hook
    dictionaries, which deepcopy reconstructs through ``__reduce_ex__``), and everything else
    (parameters, buffers, configs, non-empty hooks) through ``copy.deepcopy`` with the same
    memo, so that shared objects (tied weights, one config) stay shared in the copy. A module
    that customises its copying (``__deepcopy__``, ``__getstate__``, ``__setstate__``,
    ``__reduce_ex__``, ``__slots__``) is copied by ``copy.deepcopy`` itself. Equivalence with deepcopy is tested
    on every example architecture and a Hugging Face BERT.
    """
    memo = {} if memo is None else memo
    found = memo.get(id(module))
    if found is not None:
        return found  # type: ignore[no-any-return]
    cls = type(module)
    if (getattr(cls, "__deepcopy__", None) is not None or cls.__getstate__ is not nn.Module.__getstate__
            or cls.__setstate__ is not nn.Module.__setstate__ or cls.__reduce_ex__ is not object.__reduce_ex__
            or any("__slots__" in c.__dict__ for c in cls.__mro__[:-1])):  # fmt: skip
        return copy.deepcopy(module, memo)  # type: ignore[no-any-return]
    new = cls.__new__(cls)
    memo[id(module)] = new
    state: dict[str, Any] = {}
    for name, value in module.__dict__.items():
        if name == "_compiled_call_impl":
            continue  # as nn.Module.__getstate__: a compiled forward is not copied
        if name == "_modules":
            state[name] = {k: None if m is None else clone_module(m, memo) for k, m in value.items()}
        elif isinstance(value, _ATOMIC):
            state[name] = value
        elif type(value) in (dict, OrderedDict) and not value:
            state[name] = type(value)()
        else:
            state[name] = copy.deepcopy(value, memo)
    new.__dict__.update(state)
    return new


def _skeleton(factory: Any, architecture: ArchitectureSpec) -> nn.Module:
    """A fresh module of ``architecture`` on meta: a copy of the one built before
    (:func:`clone_module`), or a new build (kept for next time when its real tensors are small)."""
    try:
        key = (architecture.factory, json.dumps(architecture.kwargs, sort_keys=True))
    except (TypeError, ValueError):
        return _build_on_meta(factory, architecture)
    with _skeletons_lock:
        kept = _skeletons.get(key)
    if kept is not None:
        try:
            return clone_module(kept)
        except Exception:  # noqa: BLE001 - a module deepcopy cannot copy: build it each time
            with _skeletons_lock:
                _skeletons.pop(key, None)
            return _build_on_meta(factory, architecture)
    module = _build_on_meta(factory, architecture)
    module.eval()  # kept in eval mode: its copies need no eval() traversal after loading
    if module_nbytes(module) <= MAX_SKELETON_BYTES:
        try:
            skeleton = clone_module(module)
        except Exception:  # noqa: BLE001 - not copyable: never cached
            return module
        with _skeletons_lock:
            if len(_skeletons) >= MAX_SKELETONS:
                _skeletons.pop(next(iter(_skeletons)))
            _skeletons[key] = skeleton
    return module


# --- assignment -----------------------------------------------------------------------------


def _names(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:_MAX_KEYS_IN_MESSAGE])
    more = len(keys) - _MAX_KEYS_IN_MESSAGE
    return f"[{shown}{f', … {more} more' if more > 0 else ''}]"


def _tied_groups(module: nn.Module) -> list[list[str]]:
    """Names of parameters that are one object at build time (tied weights), per object."""
    by_object: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        by_object.setdefault(id(param), []).append(name)
    return [names for names in by_object.values() if len(names) > 1]


def non_persistent_buffers(module: nn.Module) -> set[str]:
    """Full names of the module's non-persistent buffers (computed at build, never loaded)."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in module.named_modules()
        for name in getattr(sub, "_non_persistent_buffers_set", ())
    }


def _skip(module: nn.Module, state: dict[str, torch.Tensor], skip_keys: frozenset[str], factory: str) -> None:
    """Drop the manifest's ``skip_keys`` from ``state``, each checked to be what the rule says."""
    if not skip_keys:
        return
    computed = non_persistent_buffers(module)
    wrong = skip_keys - computed
    if wrong:
        raise RestoreError(
            f"the manifest leaves {_names(wrong)} unloaded as non-persistent buffers, but "
            f"architecture {factory!r} has no such non-persistent buffer (it has "
            f"{_names(computed)}); republish the snapshot for this version of the architecture"
        )
    for key in skip_keys:
        state.pop(key, None)


def _mismatch(module: nn.Module, missing: set[str], unexpected: set[str], factory: str) -> RestoreError:
    """The error for a state dict that does not match: what is missing, what is extra, and
    a fix that blames the architecture only when the file cannot be its weights."""
    computed = non_persistent_buffers(module) & unexpected
    head = (
        f"the snapshot's weights do not match architecture {factory!r}: missing "
        f"{len(missing)} {_names(missing)}, unexpected {len(unexpected)} {_names(unexpected)}. "
    )
    if not missing and computed == unexpected:
        return RestoreError(
            head + "The unexpected tensors are non-persistent buffers this module computes "
            "itself (saved by an older version of its library): the architecture is right. "
            "Publish the file with skip_keys for them (`warmstart publish --hf-dir` does this, "
            "as does publish_file(..., skip_non_persistent=True)); they are recorded in the manifest"
        )
    return RestoreError(
        head + "The file and the architecture spec (factory and kwargs) do not belong together: "
        "Republish with the factory and kwargs (e.g. the config) that produced these weights"
    )


def _assign(module: nn.Module, state: dict[str, torch.Tensor], factory: str, skip_keys: frozenset[str] = frozenset()) -> None:
    _skip(module, state, skip_keys, factory)
    tied = _tied_groups(module)
    for group in tied:
        # safetensors stores a shared tensor once, under one of its names.
        present = [name for name in group if name in state]
        if present:
            for name in group:
                state.setdefault(name, state[present[0]])
    expected = set(module.state_dict(keep_vars=True))
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise _mismatch(module, missing, unexpected, factory)
    try:
        if _plain_loading(module):
            _assign_plain(module, state)
        else:
            module.load_state_dict(state, strict=True, assign=True)
            module.requires_grad_(False)
    except RuntimeError as e:
        raise RestoreError(
            f"the snapshot's weights do not fit architecture {factory!r}: {e}. Republish the "
            "snapshot with the architecture spec (factory and kwargs) that produced them"
        ) from e
    for group in tied:
        shared = module.get_parameter(group[0])
        for name in group[1:]:
            owner, _, attr = name.rpartition(".")
            module.get_submodule(owner)._parameters[attr] = shared
    if any(m.training for m in module.modules()):  # a kept skeleton is in eval mode already
        module.eval()
    left_on_meta = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise RestoreError(
            f"architecture {factory!r} left {_names(left_on_meta)} without values after loading: "
            "a persistent buffer or parameter created outside register_parameter/register_buffer; "
            "make it a registered buffer or parameter of the module"
        )


def _plain_loading(module: nn.Module) -> bool:
    """True when ``load_state_dict`` would do nothing but check shapes and assign: no module
    of the tree customises ``_load_from_state_dict`` or has load hooks (BatchNorm, quantized
    modules, some libraries' modules do; they get ``load_state_dict`` itself)."""
    base = nn.Module._load_from_state_dict
    return all(
        type(m)._load_from_state_dict is base and not m._load_state_dict_pre_hooks and not m._load_state_dict_post_hooks
        for m in module.modules()
    )


def _assign_plain(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """What ``load_state_dict(state, strict=True, assign=True)`` does for plain modules, with
    ``requires_grad`` off, without its per-module walk and hooks: each tensor becomes the parameter (or
    buffer) of its name, shapes checked first. The keys were checked to match already.

    Raises:
        RuntimeError: a shape differs (as ``load_state_dict`` raises it).
    """
    owners = dict(module.named_modules(remove_duplicate=False))
    placed: list[tuple[nn.Module, str, torch.Tensor, bool]] = []
    wrong = []
    for name, tensor in state.items():
        owner_name, _, attr = name.rpartition(".")
        owner = owners[owner_name]
        is_param = attr in owner._parameters
        current = owner._parameters[attr] if is_param else owner._buffers[attr]
        if current is not None and current.shape != tensor.shape:
            wrong.append(f"size mismatch for {name}: copying a param with shape {tuple(tensor.shape)} from "
                         f"checkpoint, the shape in current model is {tuple(current.shape)}")  # fmt: skip
        placed.append((owner, attr, tensor, is_param))
    if wrong:  # nothing assigned: the module is dropped whole
        raise RuntimeError("; ".join(wrong[:_MAX_KEYS_IN_MESSAGE]))
    for owner, attr, tensor, is_param in placed:
        if is_param:
            owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
        else:
            owner._buffers[attr] = tensor


_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.madvise.restype = ctypes.c_int


def _madvise(address: int, length: int, advice: int) -> int:
    # The map starts on a page boundary (mmap's result), so no rounding is needed.
    return _libc.madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), ctypes.c_int(advice))
