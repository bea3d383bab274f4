"""Hugging Face folders: publish ``config.json`` + ``model.safetensors`` unchanged, rebuild the
``transformers`` class from the config at restore.

The architecture is ``warmstart.snapshot.hf:build_hf_model`` with kwargs ``{"config": <the
folder's config.json>}``. It is registered (entry point ``hf-transformers``) only when the
optional extra is installed (``pip install 'warmstart[hf]'``): without ``transformers`` a
manifest naming it is refused like any unregistered architecture. The class is
``config["architectures"][0]`` (or ``model_class``), looked up in the ``transformers`` package
and required to be a ``PreTrainedModel``: no remote code, nothing imported from the config.

The weights file is published byte for byte (same sha256 as in the folder). A sharded folder
(``model.safetensors.index.json`` and its ``model-0000k-of-0000n.safetensors``) is published
the same way, each shard byte for byte under its own name, after the index and the shards'
headers are checked against each other (:func:`parse_shard_index`,
:func:`check_shard_tensors`): every shard present, each tensor in exactly the shard the index
names. Tensors the
module computes itself (non-persistent buffers such as ``embeddings.position_ids``, which
checkpoints saved by older ``transformers`` hold) are recorded in the manifest's
``skip_keys`` and left unloaded; every other tensor loads strictly.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart.infra.errors import HFFolderError, SafetensorsHeaderError
from warmstart.snapshot.header import read_header_file
from warmstart.snapshot.jsonlimits import load_json, short
from warmstart.snapshot.manifest import (
    MAX_MANIFEST_BYTES,
    MAX_SHARDS,
    MAX_TENSOR_NAME_LENGTH,
    MAX_TENSORS,
    Manifest,
    shard_file_problem,
)
from warmstart.snapshot.stores.base import SnapshotStore

FACTORY = "warmstart.snapshot.hf:build_hf_model"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_CONFIG_BYTES = 1024 * 1024
#: an index lists every tensor once, the manifest each with its shape and offsets too: an
#: index larger than a manifest may be could never be published.
MAX_INDEX_BYTES = MAX_MANIFEST_BYTES
#: tensor names quoted in one message
_EXAMPLES = 5
#: bound on ``max_position_embeddings``: buffers computed at build (on the real device) grow with it
MAX_POSITIONS = 1 << 20
_CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9]{0,127}")
#: inputs a HF model is published with, when its forward takes them (called by keyword)
_HF_INPUTS = ("input_ids", "attention_mask")


def _model_class(config: Mapping[str, Any], model_class: str | None) -> type[nn.Module]:
    """The ``transformers`` class named by the config (or ``model_class``).

    Raises:
        ValueError: no usable name, or not a ``PreTrainedModel`` of the installed transformers.
    """
    import transformers

    name = model_class
    if name is None:
        names = config.get("architectures")
        if not isinstance(names, list) or not names or not isinstance(names[0], str):
            raise ValueError(f"{CONFIG_FILE} names no 'architectures' (e.g. [\"BertModel\"])")
        name = names[0]
    if not _CLASS_NAME.fullmatch(name):
        raise ValueError(f"architecture {name[:80]!r} is not a transformers class name")
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(
            f"architecture {name!r} is not a model class of transformers {transformers.__version__}"
        )
    return cls


def build_hf_model(config: dict[str, Any], model_class: str | None = None) -> nn.Module:
    """Build the ``transformers`` model described by ``config`` (a ``config.json`` as a dict).

    Called on the meta device by restore: parameters cost nothing, non-persistent buffers
    (position ids) are computed for real.

    Raises:
        ValueError: an unknown ``model_type`` or class (a RestoreError at restore).
    """
    from transformers import AutoConfig

    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{CONFIG_FILE} must be an object with a 'model_type' string")
    longest = config.get("max_position_embeddings", 0)
    if not isinstance(longest, int) or isinstance(longest, bool) or not 0 <= longest <= MAX_POSITIONS:
        # Non-persistent buffers (position ids, rotary tables) are real even on meta: bound them.
        raise ValueError(f"max_position_embeddings must be an int in [0, {MAX_POSITIONS}], got {str(longest)[:40]}")
    cls = _model_class(config, model_class)
    fields = {k: v for k, v in config.items() if k != "model_type"}
    hf_config = AutoConfig.for_model(config["model_type"], **fields)
    return cls(hf_config).eval()


#: What a worker builds once at start (``prepare_architectures``): a tiny BERT, which imports
#: transformers and its BERT modules before any request needs them.
build_hf_model.warmup_kwargs = {  # type: ignore[attr-defined]
    "config": {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": 8, "hidden_size": 8,
               "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8,
               "max_position_embeddings": 8},
}  # fmt: skip


# --- the folder ------------------------------------------------------------------------------


class ShardIndexError(HFFolderError):
    """Raised when a sharded folder's ``model.safetensors.index.json`` cannot be used: too
    large, not JSON, not ``{"weight_map": {tensor: shard file}}``, too many shards, a shard
    name that is not a plain file name, or a shard file missing from the folder."""

    code = "hf_shard_index"


class ShardTensorsError(HFFolderError):
    """Raised when the shards of a sharded folder disagree with its index: a tensor in two
    shards, in another shard than the index says, in a shard but not in the index, or in the
    index but in no shard."""

    code = "hf_shard_tensors"


@dataclass(frozen=True)
class HFFolder:
    path: Path
    config: dict[str, Any]
    #: ``model.safetensors``, or the shard files in order (a tuple) for a sharded folder.
    weights: Path | tuple[Path, ...]


def _fix(index: str) -> str:
    return f"fix {index} or save the model again with save_pretrained()"


def parse_shard_index(raw: bytes | str, where: str = INDEX_FILE) -> dict[str, str]:
    """The ``weight_map`` of a ``model.safetensors.index.json``: tensor name -> shard file.

    Every size is checked before the work it bounds: the document's length before it is
    decoded (and its nesting, by :func:`load_json`), the number of entries before they are
    read, the number of distinct shards as they are counted.

    Args:
        raw: the index's bytes.
        where: names the index in messages (its path).

    Raises:
        ShardIndexError: over :data:`MAX_INDEX_BYTES`, not UTF-8 JSON, not an object with a
            ``weight_map`` object (and an optional ``metadata`` object), no tensors or over
            :data:`~warmstart.snapshot.manifest.MAX_TENSORS`, a tensor name that is empty or
            too long, a shard that is not a plain ``*.safetensors`` file name, or more than
            :data:`~warmstart.snapshot.manifest.MAX_SHARDS` shards.
    """
    if len(raw) > MAX_INDEX_BYTES:
        raise ShardIndexError(f"{where} is {len(raw)} bytes, over the {MAX_INDEX_BYTES}-byte limit for an index; {_fix(where)}")
    try:
        obj = load_json(raw, what=where, error=ShardIndexError)
    except ShardIndexError as e:
        raise ShardIndexError(f"{str(e).removesuffix('; republish it')}; {_fix(where)}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict):
        raise ShardIndexError(
            f"{where} must be a JSON object with a 'weight_map' object (tensor name -> shard file); {_fix(where)}"
        )
    if not isinstance(obj.get("metadata", {}), dict):
        raise ShardIndexError(f"{where}: 'metadata' must be an object; {_fix(where)}")
    weight_map = obj["weight_map"]
    if not weight_map:
        raise ShardIndexError(f"{where} maps no tensors (an empty 'weight_map'); {_fix(where)}")
    if len(weight_map) > MAX_TENSORS:
        raise ShardIndexError(
            f"{where} maps {len(weight_map)} tensors, over the limit of {MAX_TENSORS} for one snapshot; "
            f"{_fix(where)}"
        )
    shards: set[str] = set()
    for name, shard in weight_map.items():
        if not 0 < len(name) <= MAX_TENSOR_NAME_LENGTH:
            raise ShardIndexError(
                f"{where} maps a tensor named {short(name)}: names are 1-{MAX_TENSOR_NAME_LENGTH} characters; "
                f"{_fix(where)}"
            )
        if not isinstance(shard, str) or shard not in shards:
            problem = shard_file_problem(shard)
            if problem is not None:
                raise ShardIndexError(f"{where}: the shard of tensor {short(name)} {problem}; {_fix(where)}")
            shards.add(shard)
            if len(shards) > MAX_SHARDS:
                raise ShardIndexError(
                    f"{where} names more than {MAX_SHARDS} shard files, the limit for one snapshot "
                    f"(MAX_SHARDS); save the model again with a larger max_shard_size"
                )
    return dict(weight_map)


def check_shard_tensors(
    weight_map: Mapping[str, str], found: Mapping[str, Iterable[str]], where: str = INDEX_FILE
) -> None:
    """Require the shards to hold exactly what the index says: each tensor in one shard, the
    one its ``weight_map`` entry names, and nothing else.

    Args:
        weight_map: the index's tensor -> shard file (:func:`parse_shard_index`).
        found: shard file -> the tensor names its header holds, for each shard the index names.
        where: names the index in messages.

    Raises:
        ShardTensorsError: a tensor in two shards; a tensor in another shard than the index
            says; a tensor of a shard that the index does not list; a tensor of the index in
            no shard. The message names the files and up to five tensors.
    """
    holder: dict[str, str] = {}
    twice: list[str] = []
    for shard, names in found.items():
        for name in names:
            if name in holder:
                twice.append(f"{short(name)} in {holder[name]} and {shard}")
            else:
                holder[name] = shard
    if twice:
        raise ShardTensorsError(
            f"the shards of {where} overlap: tensor {', '.join(twice[:_EXAMPLES])}"
            f"{f' (and {len(twice) - _EXAMPLES} more)' if len(twice) > _EXAMPLES else ''}; a tensor "
            "belongs to one shard: save the model again with save_pretrained()"
        )
    elsewhere = [f"{short(n)} (index: {weight_map[n]}, found in {s})" for n, s in holder.items()
                 if n in weight_map and weight_map[n] != s]  # fmt: skip
    unlisted = [f"{short(n)} in {s}" for n, s in holder.items() if n not in weight_map]
    nowhere = [f"{short(n)} (index: {s})" for n, s in weight_map.items() if n not in holder]
    for problems, what in (
        (elsewhere, "maps tensors to other shards than those holding them"),
        (unlisted, "does not list tensors that the shards hold"),
        (nowhere, "lists tensors that no shard holds"),
    ):
        if problems:
            more = f" (and {len(problems) - _EXAMPLES} more)" if len(problems) > _EXAMPLES else ""
            raise ShardTensorsError(f"{where} {what}: {', '.join(problems[:_EXAMPLES])}{more}; {_fix(where)}")


def read_shards(path: Path) -> tuple[Path, ...]:
    """The shard files of a sharded folder, in order, after checking its index (size, JSON,
    shard names and count), that every shard is there, and that their headers agree with it.

    Raises:
        ShardIndexError: a bad index, or shard files missing from the folder.
        ShardTensorsError: the shards disagree with the index.
        SafetensorsHeaderError: a shard's header is malformed or lies (the shard is named).
    """
    index = path / INDEX_FILE
    size = index.stat().st_size
    if size > MAX_INDEX_BYTES:  # before a byte of it is read
        raise ShardIndexError(f"{index} is {size} bytes, over the {MAX_INDEX_BYTES}-byte limit for an index; {_fix(str(index))}")
    with open(index, "rb") as f:
        raw = f.read(MAX_INDEX_BYTES + 1)
    weight_map = parse_shard_index(raw, str(index))
    names = sorted(set(weight_map.values()))
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise ShardIndexError(
            f"{index} names {len(missing)} shard files that are not in {path}: {missing[:_EXAMPLES]}"
            f"{' …' if len(missing) > _EXAMPLES else ''}; copy every shard of the checkpoint into the folder"
        )
    found: dict[str, list[str]] = {}
    for name in names:
        try:
            found[name] = list(read_header_file(path / name)[1])
        except SafetensorsHeaderError as e:
            raise SafetensorsHeaderError(f"shard {path / name}: {e}") from e
    check_shard_tensors(weight_map, found, str(index))
    return tuple(path / name for name in names)


def read_hf_folder(path: Path) -> HFFolder:
    """Check a Hugging Face folder before anything is built or uploaded.

    ``model.safetensors`` is used when the folder has it; otherwise a sharded folder's index
    and shards (see :func:`read_shards`).

    Raises:
        HFFolderError: not a folder, no or a bad ``config.json`` (too large, not a JSON
            object, no ``model_type``), or neither ``model.safetensors`` nor an index.
        ShardIndexError, ShardTensorsError, SafetensorsHeaderError: a sharded folder whose
            index or shards are wrong (see :func:`read_shards`).
    """
    path = Path(path)
    if not path.is_dir():
        raise HFFolderError(f"{path} is not a folder; pass --hf-dir a Hugging Face model folder")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise HFFolderError(f"{config_path} is missing: a Hugging Face folder needs its {CONFIG_FILE}")
    size = config_path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise HFFolderError(f"{config_path} is {size} bytes, over the {MAX_CONFIG_BYTES}-byte limit for a config")
    config = load_json(config_path.read_bytes(), what=str(config_path), error=HFFolderError)
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise HFFolderError(f"{config_path} must be a JSON object with a 'model_type' string (e.g. \"bert\")")
    weights = path / WEIGHTS_FILE
    if weights.is_file():
        return HFFolder(path, config, weights)
    if (path / INDEX_FILE).is_file():
        return HFFolder(path, config, read_shards(path))
    raise HFFolderError(
        f"{weights} is missing: the folder needs its weights as {WEIGHTS_FILE}, or sharded as "
        f"{INDEX_FILE} and the shard files it names"
    )


def hf_input_specs(config: Mapping[str, Any], cls: type[nn.Module]) -> list[dict[str, Any]]:
    """Input specs from the config: ids within ``[0, vocab_size)``, masks within ``[0, 2)``,
    ``seq`` at most ``max_position_embeddings``; pad values (``pad_token_id``, mask 0) so that
    a batch may pad shorter sequences.

    Raises:
        HFFolderError: no usable ``vocab_size``, or a forward without ``input_ids``.
    """
    vocab = config.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise HFFolderError(f"{CONFIG_FILE} has no positive int 'vocab_size'; it bounds input_ids")
    taken = inspect.signature(cls.forward).parameters
    if "input_ids" not in taken:
        raise HFFolderError(f"{cls.__name__}.forward takes no input_ids; publish it with publish_file and explicit inputs")
    max_len = config.get("max_position_embeddings")
    dim_max = {"seq": max_len} if isinstance(max_len, int) and not isinstance(max_len, bool) and max_len > 0 else {}
    specs = []
    for name in _HF_INPUTS:
        if name in taken:
            pad = config.get("pad_token_id") if name == "input_ids" else 0
            spec: dict[str, Any] = {"name": name, "dtype": "int64", "shape": ["batch", "seq"],
                                    "value_range": [0, vocab] if name == "input_ids" else [0, 2]}  # fmt: skip
            if isinstance(pad, int) and not isinstance(pad, bool) and 0 <= pad < spec["value_range"][1]:
                spec["pad"] = pad  # batches pad shorter sequences: masked out, as a tokenizer does
            if dim_max:
                spec["dim_max"] = dict(dim_max)
            specs.append(spec)
    return specs


def hf_golden_inputs(specs: Sequence[Mapping[str, Any]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Two sequences of 8 tokens: ids across the vocabulary, the second one padded after 5
    tokens (its mask 0 there, its ids the pad 0), as a tokenizer would give them."""
    generator = torch.Generator().manual_seed(seed)
    vocab = next(s["value_range"][1] for s in specs if s["name"] == "input_ids")
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 5:] = 0
    ids = torch.randint(0, vocab, (2, 8), generator=generator) * mask
    out = {"input_ids": ids}
    if any(s["name"] == "attention_mask" for s in specs):
        out["attention_mask"] = mask
    return out


def publish_hf_folder(
    store: SnapshotStore,
    model: str,
    version: str,
    folder: Path,
    *,
    outputs: Sequence[str] | None = None,
    golden_inputs: Mapping[str, torch.Tensor] | None = None,
    model_class: str | None = None,
    **options: Any,
) -> Manifest:
    """Publish a Hugging Face folder: its ``model.safetensors`` (or each of its shards)
    unchanged, the architecture
    :data:`FACTORY` with the folder's config, inputs from the config (see
    :func:`hf_input_specs`), non-persistent buffers saved in the file recorded as
    ``skip_keys``. Options as :func:`~warmstart.snapshot.publish.publish_file`.

    Raises:
        HFFolderError: the folder (see :func:`read_hf_folder`) or its config's class is wrong.
        UnregisteredArchitectureError: ``transformers`` is not installed (``warmstart[hf]``).
        And as :func:`~warmstart.snapshot.publish.publish_file`.
    """
    from warmstart.snapshot.publish import publish_file
    from warmstart.snapshot.registry import check_allowed

    hf = read_hf_folder(folder)
    check_allowed(FACTORY, options.get("allowed_architectures", ()))
    try:
        cls = _model_class(hf.config, model_class)
    except ValueError as e:
        raise HFFolderError(f"{hf.path / CONFIG_FILE}: {e}; set 'architectures' to a transformers model class") from e
    specs = hf_input_specs(hf.config, cls)
    kwargs: dict[str, Any] = {"config": hf.config}
    if model_class is not None:
        kwargs["model_class"] = model_class
    return publish_file(
        store, model, version, hf.weights, {"factory": FACTORY, "kwargs": kwargs}, specs,
        hf_golden_inputs(specs) if golden_inputs is None else golden_inputs,
        outputs=outputs, skip_non_persistent=True, **options,
    )  # fmt: skip
