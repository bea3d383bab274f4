"""Tiny model factories for snapshot tests, allowed through ``allowed_architectures``.

Each builds in milliseconds and weighs a few hundred bytes, so tests publish and fetch real
snapshots without the example models.
"""

from __future__ import annotations

import torch
from torch import nn

MLP = "tests.unit.snapshot.tiny_models:build_tiny_mlp"
TIED = "tests.unit.snapshot.tiny_models:build_tiny_tied"
DICT_OUT = "tests.unit.snapshot.tiny_models:build_dict_output"
BAD_OUT = "tests.unit.snapshot.tiny_models:build_bad_output"
NOISY = "tests.unit.snapshot.tiny_models:build_noisy"
NAN_OUT = "tests.unit.snapshot.tiny_models:build_nan_output"
TINY_FACTORIES = (MLP, TIED, DICT_OUT, BAD_OUT, NOISY, NAN_OUT)

MLP_INPUTS = [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
TIED_INPUTS = [{"name": "ids", "dtype": "int64", "shape": ["batch", "seq"], "value_range": [0, 10]}]


class TinyMLP(nn.Module):
    def __init__(self, in_features: int = 4, hidden: int = 8, out_features: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def build_tiny_mlp(in_features: int = 4, hidden: int = 8, out_features: int = 3) -> TinyMLP:
    return TinyMLP(in_features, hidden, out_features)


class TinyTied(nn.Module):
    """An embedding whose output projection shares its weight (tied, stored once)."""

    def __init__(self, vocab: int = 10, dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(ids).mean(dim=1))


def build_tiny_tied(vocab: int = 10, dim: int = 4) -> TinyTied:
    return TinyTied(vocab, dim)


class DictOutput(TinyMLP):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        y = super().forward(x)
        return {"scores": y, "best": y.argmax(dim=-1)}


def build_dict_output() -> DictOutput:
    return DictOutput()


class BadOutput(TinyMLP):
    def forward(self, x: torch.Tensor) -> object:  # type: ignore[override]
        return [super().forward(x), "not a tensor"]


def build_bad_output() -> BadOutput:
    return BadOutput()


class Noisy(TinyMLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + torch.rand(1)


def build_noisy() -> Noisy:
    return Noisy()


class NanOutput(TinyMLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * float("nan")


def build_nan_output() -> NanOutput:
    return NanOutput()
