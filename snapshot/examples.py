"""Example models built in code (no downloads), for the demo, the tests and the benchmarks.

Two families, both registered in the ``warmstart.architectures`` entry-point group:

* :func:`build_recsys_model`: a recommendation model (item embedding table, recency-weighted
  history pooling, an MLP tower, and a scoring layer whose weight is *tied* to the item
  embedding table). Its recency weights are a *non-persistent* buffer computed in
  ``__init__``. Five of them, of different sizes and traffic shares, make the demo's
  recommendation system (:data:`EXAMPLE_MODELS`).
* :func:`build_transformer_encoder`: a transformer encoder over token ids with a sinusoidal
  positional encoding held as a non-persistent buffer; :func:`transformer_encoder_kwargs`
  sizes it to a target number of megabytes of float32 weights (the benchmark uses 256-512).

Both factories work normally (random init, when publishing) and under restore's meta-device
build, where only parameters are skipped and the buffers computed here stay real. Their
kwargs come from a manifest, so they are checked before anything is allocated (a ``max_len``
of 4 million once built a 1 GB table), and nothing is cached per kwargs: every buffer belongs
to its module and is freed with it, and ``restore.module_nbytes`` counts it.

The example inputs declare their limits (``value_range`` for ids and masks, ``dim_max`` for
the encoder's sequence length), which workers enforce on every request.

Sizes of the recommendation system at ``scale=1`` (float32 weights), largest first:
``premium`` (~33 MB) > ``long-form`` (~16 MB) > ``short-form`` (~8 MB) > ``kids`` (~2.7 MB)
> ``live-events`` (~1.1 MB). The most popular model is deliberately not the largest, so a
planner choosing by cold-start seconds avoided per byte has a real trade-off to make.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from warmstart.snapshot.manifest import ArchitectureSpec, InputSpec

RECSYS_FACTORY = "warmstart.snapshot.examples:build_recsys_model"
TRANSFORMER_FACTORY = "warmstart.snapshot.examples:build_transformer_encoder"

#: Dimension names used in input shapes, and the size golden inputs give them by default.
DEFAULT_DIM_SIZES: Mapping[str, int] = {"seq": 16}


# --- kwargs limits ---------------------------------------------------------------------------

# Far above the examples, low enough that no manifest can make a factory allocate much more
# than its weights (which come from the file, and which the cache and budgets count).
MAX_ITEMS = 50_000_000
MAX_WIDTH = 65_536
MAX_LAYERS = 1024
MAX_LEN = 65_536
#: The positional table is built for real at every restore: at most 64 MiB of float32.
MAX_POSITION_TABLE_ELEMENTS = 2**24


def _check_ints(lowest: int = 1, **values: tuple[object, int]) -> None:
    """Require each kwarg to be an int in ``[lowest, limit]``.

    Raises:
        ValueError: naming the kwarg, its value and its limit.
    """
    for name, (value, limit) in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or not lowest <= value <= limit:
            raise ValueError(f"{name} must be an int in [{lowest}, {limit}], got {value!r}")


# --- the recommendation model ---------------------------------------------------------------


class RecsysModel(nn.Module):
    """Scores every item for a user: ``(user_features, item_ids) -> scores [batch, num_items]``.

    ``item_ids`` is the user's recent history, most recent first, with ``0`` as padding.
    """

    def __init__(
        self,
        num_items: int = 20_000,
        embedding_dim: int = 64,
        user_dim: int = 32,
        history_len: int = 20,
        hidden: int = 256,
        num_layers: int = 2,
        recency_half_life: float = 6.0,
    ) -> None:
        super().__init__()
        _check_ints(
            num_items=(num_items, MAX_ITEMS), embedding_dim=(embedding_dim, MAX_WIDTH),
            user_dim=(user_dim, MAX_WIDTH), history_len=(history_len, MAX_LEN),
            hidden=(hidden, MAX_WIDTH), num_layers=(num_layers, MAX_LAYERS),
        )  # fmt: skip
        if not isinstance(recency_half_life, (int, float)) or not 0 < recency_half_life < math.inf:
            raise ValueError(f"recency_half_life must be a positive number, got {recency_half_life!r}")
        self.item_embedding = nn.Embedding(num_items, embedding_dim, padding_idx=0)
        self.user_proj = nn.Linear(user_dim, embedding_dim)
        layers: list[nn.Module] = []
        width = 2 * embedding_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.tower = nn.Sequential(*layers)
        self.to_query = nn.Linear(hidden, embedding_dim)
        # Scores are dot products with the item embeddings: the classic tied output layer.
        self.score = nn.Linear(embedding_dim, num_items, bias=False)
        self.score.weight = self.item_embedding.weight
        self.item_bias = nn.Parameter(torch.zeros(num_items))
        # Derived from a hyper-parameter, not learned: recomputed at build, never stored.
        positions = torch.arange(history_len, dtype=torch.float32)
        self.register_buffer("recency", torch.pow(0.5, positions / recency_half_life), persistent=False)

    def forward(self, user_features: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        history = self.item_embedding(item_ids)  # [batch, history, dim]
        weights = (item_ids != 0).to(history.dtype) * self.recency  # padding weighs nothing
        pooled = (history * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1e-6)
        x = torch.cat([pooled, self.user_proj(user_features)], dim=-1)
        return self.score(self.to_query(self.tower(x))) + self.item_bias


def build_recsys_model(**kwargs: Any) -> RecsysModel:
    """Factory for :class:`RecsysModel` (kwargs: ``num_items``, ``embedding_dim``, ``user_dim``,
    ``history_len``, ``hidden``, ``num_layers``, ``recency_half_life``)."""
    return RecsysModel(**kwargs)


# --- the transformer encoder ----------------------------------------------------------------


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """The fixed sin/cos positional encoding of "Attention is all you need", ``[max_len, d_model]``.

    Computed afresh for every module (about 1 ms for 512 x 768), never cached: a cached table
    outlived the model that asked for it, held memory no budget counted, and let a manifest's
    kwargs choose its size.
    """
    # numpy in float32, single-threaded: 1 ms for 512 x 768, against 5 ms in float64 and up
    # to 40 ms for torch's parallel kernels on a busy 2-core box. It is computed the same way
    # at publish and at restore, so golden outputs agree exactly.
    position = np.arange(max_len, dtype=np.float32)[:, None]
    freq = np.exp(np.arange(0, d_model, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / d_model))
    angles = position * freq
    table = np.empty((max_len, d_model), dtype=np.float32)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles)
    # A plain CPU tensor whatever the caller's mode or default device (restore builds under
    # meta, and a module built under inference mode could not use it outside).
    with torch.inference_mode(False):
        return torch.from_numpy(table)


class _EncoderStack(nn.Module):
    """``num_layers`` pre-norm encoder layers, each built afresh.

    Why not ``nn.TransformerEncoder``: it builds one layer and deep-copies it per depth, which
    costs about 1.5 ms per layer in Python on every restore (the module is rebuilt on the meta
    device each time), more than the rest of the restore put together. The state dict keys
    (``layers.<i>.…``) and the computation are the same (no nested tensors).
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model, num_heads, ffn_dim, dropout=0.0, activation="gelu", batch_first=True,
                norm_first=True,
            )  # fmt: skip
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=src_key_padding_mask)
        return x


class TransformerEncoderModel(nn.Module):
    """``(input_ids, attention_mask) -> pooled [batch, d_model]`` (mask-weighted mean)."""

    def __init__(
        self,
        vocab_size: int = 8192,
        d_model: int = 256,
        num_heads: int = 4,
        num_layers: int = 2,
        ffn_dim: int = 1024,
        max_len: int = 512,
    ) -> None:
        super().__init__()
        _check_ints(
            vocab_size=(vocab_size, MAX_ITEMS), d_model=(d_model, MAX_WIDTH),
            num_heads=(num_heads, MAX_WIDTH), ffn_dim=(ffn_dim, 4 * MAX_WIDTH), max_len=(max_len, MAX_LEN),
        )  # fmt: skip
        _check_ints(0, num_layers=(num_layers, MAX_LAYERS))  # no layers: embeddings and a norm
        if d_model % num_heads or d_model % 2:
            raise ValueError(f"d_model {d_model} must be even and divisible by num_heads {num_heads}")
        if max_len * d_model > MAX_POSITION_TABLE_ELEMENTS:
            raise ValueError(
                f"max_len {max_len} x d_model {d_model} makes a positional table of "
                f"{max_len * d_model} elements, over the limit of {MAX_POSITION_TABLE_ELEMENTS}"
            )
        self.max_len = max_len
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.register_buffer("positions", sinusoidal_positions(max_len, d_model), persistent=False)
        self.encoder = _EncoderStack(d_model, num_heads, ffn_dim, num_layers)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        if seq > self.max_len:
            raise ValueError(f"sequence length {seq} exceeds max_len {self.max_len}")
        x = self.token_embedding(input_ids) + self.positions[:seq]
        x = self.norm(self.encoder(x, src_key_padding_mask=attention_mask == 0))
        weights = attention_mask.to(x.dtype).unsqueeze(-1)
        return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def build_transformer_encoder(**kwargs: Any) -> TransformerEncoderModel:
    """Factory for :class:`TransformerEncoderModel` (kwargs: ``vocab_size``, ``d_model``,
    ``num_heads``, ``num_layers``, ``ffn_dim``, ``max_len``)."""
    return TransformerEncoderModel(**kwargs)


def transformer_param_count(vocab_size: int, d_model: int, num_layers: int, ffn_dim: int, **_: Any) -> int:
    """Exact parameter count of :class:`TransformerEncoderModel` (heads do not change it)."""
    attention = 4 * d_model * d_model + 4 * d_model  # in_proj (3) + out_proj, with biases
    ffn = 2 * d_model * ffn_dim + ffn_dim + d_model
    norms = 4 * d_model
    return vocab_size * d_model + num_layers * (attention + ffn + norms) + 2 * d_model


def transformer_encoder_kwargs(size_mb: float) -> dict[str, Any]:
    """Kwargs for :func:`build_transformer_encoder` giving about ``size_mb`` MiB of float32 weights.

    The width grows with the target (BERT-like shapes: 64-dim heads, 4x feed-forward), the
    depth fills most of the budget and the vocabulary takes up the remainder, so the result
    lands within a fraction of a percent of the target for anything above ~1 MiB.

    Raises:
        ValueError: ``size_mb`` is not positive.
    """
    if not size_mb > 0:
        raise ValueError(f"size_mb must be > 0, got {size_mb}")
    target = int(size_mb * 1024 * 1024 / 4)
    d_model = 128
    for width in (128, 256, 384, 512, 768, 1024, 1536, 2048):
        if 12 * width * width * 6 <= target:  # keep at least ~6 layers' worth at this width
            d_model = width
    per_layer = transformer_param_count(0, d_model, 1, 4 * d_model) - 2 * d_model
    num_layers = max(1, min(48, int(target * 0.8) // per_layer))
    rest = target - transformer_param_count(0, d_model, num_layers, 4 * d_model)
    vocab_size = max(256, rest // d_model)
    return {
        "vocab_size": int(vocab_size),
        "d_model": d_model,
        "num_heads": max(1, d_model // 64),
        "num_layers": num_layers,
        "ffn_dim": 4 * d_model,
        "max_len": 512,
    }


# --- the catalogue --------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleModel:
    """One example model: how to build it, what it takes, and how much traffic it gets.

    ``id_limits`` maps an integer input to its exclusive upper bound (vocabulary size);
    ``mask_inputs`` names 0/1 masks (golden masks always keep their first position);
    ``dim_sizes`` gives dynamic dimensions other than ``batch`` their golden size. The input
    specs declare the same limits (``value_range``, ``dim_max``), for workers to enforce.
    """

    name: str
    traffic_share: float
    architecture: ArchitectureSpec
    inputs: tuple[InputSpec, ...]
    eager: bool
    description: str
    id_limits: Mapping[str, int] = field(default_factory=dict)
    mask_inputs: tuple[str, ...] = ()
    dim_sizes: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_DIM_SIZES))

    def build(self, seed: int | None = None) -> nn.Module:
        """Build the module normally (random init), in eval mode, as publish does.

        Args:
            seed: when given, the weights are a function of it (the global RNG is left as
                it was); otherwise they come from the global RNG.
        """
        factories = {RECSYS_FACTORY: build_recsys_model, TRANSFORMER_FACTORY: build_transformer_encoder}
        factory = factories[self.architecture.factory]
        if seed is None:
            return factory(**self.architecture.kwargs).eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return factory(**self.architecture.kwargs).eval()

    def golden_inputs(self, seed: int = 0, batch: int = 2) -> dict[str, torch.Tensor]:
        """Valid, deterministic inputs: ids within their vocabulary, masks of 0/1.

        Args:
            seed: seeds a private generator (the global RNG is left alone).
            batch: size of every ``"batch"`` dimension.
        """
        generator = torch.Generator().manual_seed(seed)
        out: dict[str, torch.Tensor] = {}
        for spec in self.inputs:
            shape = [d if isinstance(d, int) else (batch if d == "batch" else self.dim_sizes[d]) for d in spec.shape]
            dtype = getattr(torch, spec.dtype)
            if spec.name in self.mask_inputs:
                value = torch.randint(0, 2, shape, generator=generator, dtype=dtype)
                value[..., 0] = 1  # never an all-padding row
            elif spec.name in self.id_limits:
                value = torch.randint(0, self.id_limits[spec.name], shape, generator=generator, dtype=dtype)
            else:
                value = torch.randn(shape, generator=generator).to(dtype)
            out[spec.name] = value
        return out


#: name -> (traffic share, eager, num_items, embedding_dim, hidden, num_layers, description)
_RECSYS: dict[str, tuple[float, bool, int, int, int, int, str]] = {
    "short-form": (0.79, True, 30_000, 64, 256, 2, "short videos feed: most traffic, mid-size"),
    "long-form": (0.15, True, 40_000, 96, 384, 2, "long-form videos: second by traffic"),
    "premium": (0.05, True, 64_000, 128, 512, 3, "premium catalogue: the largest, rarely used"),
    "kids": (0.007, False, 10_000, 64, 128, 2, "kids catalogue: rare, lazy"),
    "live-events": (0.003, False, 4_000, 64, 128, 1, "live events: rarest and smallest, lazy"),
}
RECSYS_USER_DIM = 32
RECSYS_HISTORY_LEN = 20


def recsys_example(name: str, scale: float = 1.0) -> ExampleModel:
    """One of the five recommendation models; ``scale`` multiplies its item count (and so,
    roughly, its size).

    Raises:
        KeyError: ``name`` is not one of :data:`RECSYS_NAMES`.
        ValueError: ``scale`` is not positive.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    share, eager, num_items, dim, hidden, layers, description = _RECSYS[name]
    num_items = max(2, int(num_items * scale))
    kwargs = {
        "num_items": num_items, "embedding_dim": dim, "user_dim": RECSYS_USER_DIM,
        "history_len": RECSYS_HISTORY_LEN, "hidden": hidden, "num_layers": layers,
    }  # fmt: skip
    return ExampleModel(
        name=name,
        traffic_share=share,
        architecture=ArchitectureSpec(RECSYS_FACTORY, kwargs),
        inputs=(
            InputSpec("user_features", "float32", ("batch", RECSYS_USER_DIM)),
            InputSpec("item_ids", "int64", ("batch", RECSYS_HISTORY_LEN), value_range=(0, num_items)),
        ),
        eager=eager,
        description=description,
        id_limits={"item_ids": num_items},
    )


RECSYS_NAMES: tuple[str, ...] = tuple(_RECSYS)


def recsys_examples(scale: float = 1.0) -> dict[str, ExampleModel]:
    """The five-model recommendation system, by name, traffic shares summing to 1."""
    return {name: recsys_example(name, scale) for name in RECSYS_NAMES}


#: The demo's recommendation system at the default scale.
EXAMPLE_MODELS: dict[str, ExampleModel] = recsys_examples()


def transformer_example(size_mb: float, name: str | None = None) -> ExampleModel:
    """A transformer encoder of about ``size_mb`` MiB of float32 weights (eager, no traffic
    share of its own: benchmarks give it whatever traffic they simulate)."""
    kwargs = transformer_encoder_kwargs(size_mb)
    longest = {"seq": kwargs["max_len"]}  # forward() refuses longer sequences
    return ExampleModel(
        name=name or f"encoder-{size_mb:g}mb",
        traffic_share=0.0,
        architecture=ArchitectureSpec(TRANSFORMER_FACTORY, kwargs),
        inputs=(
            InputSpec("input_ids", "int64", ("batch", "seq"), value_range=(0, kwargs["vocab_size"]), dim_max=longest),
            InputSpec("attention_mask", "int64", ("batch", "seq"), value_range=(0, 2), dim_max=dict(longest)),
        ),
        eager=True,
        description=f"transformer encoder, ~{size_mb:g} MiB float32",
        id_limits={"input_ids": kwargs["vocab_size"]},
        mask_inputs=("attention_mask",),
    )
