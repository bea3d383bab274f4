"""Hugging Face folders: publish ``config.json`` + ``model.safetensors`` unchanged, rebuild the
``transformers`` class from the config at restore.

The architecture is ``warmstart.snapshot.hf:build_hf_model`` with kwargs ``{"config": <the
folder's config.json>}``. It is registered (entry point ``hf-transformers``) only when the
optional extra is installed (``pip install 'warmstart[hf]'``): without ``transformers`` a
manifest naming it is refused like any unregistered architecture. The class is
``config["architectures"][0]`` (or ``model_class``), looked up in the ``transformers`` package
and required to be a ``PreTrainedModel``: no remote code, nothing imported from the config.

The weights file is published byte for byte (same sha256 as in the folder). Tensors the
module computes itself (non-persistent buffers such as ``embeddings.position_ids``, which
checkpoints saved by older ``transformers`` hold) are recorded in the manifest's
``skip_keys`` and left unloaded; every other tensor loads strictly.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart.infra.errors import HFFolderError
from warmstart.snapshot.jsonlimits import load_json
from warmstart.snapshot.manifest import Manifest
from warmstart.snapshot.stores.base import SnapshotStore

FACTORY = "warmstart.snapshot.hf:build_hf_model"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_CONFIG_BYTES = 1024 * 1024
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


@dataclass(frozen=True)
class HFFolder:
    path: Path
    config: dict[str, Any]
    weights: Path


def read_hf_folder(path: Path) -> HFFolder:
    """Check a Hugging Face folder before anything is built or uploaded.

    Raises:
        HFFolderError: not a folder, no or a bad ``config.json`` (too large, not a JSON
            object, no ``model_type``), no ``model.safetensors``, or a sharded folder.
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
    if not weights.is_file():
        if (path / INDEX_FILE).is_file():
            raise HFFolderError(
                f"{path} holds sharded weights ({INDEX_FILE}); warmstart publishes one "
                f"{WEIGHTS_FILE} for now: save the model with save_pretrained(max_shard_size='100GB')"
            )
        raise HFFolderError(f"{weights} is missing: the folder needs its weights as {WEIGHTS_FILE}")
    return HFFolder(path, config, weights)


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
    """Publish a Hugging Face folder: its ``model.safetensors`` unchanged, the architecture
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
