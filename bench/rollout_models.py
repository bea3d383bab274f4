"""The model ``warmstart bench rollout`` rolls out: an MLP in four versions.

- ``good``: other weights, same shapes;
- ``bad``: answers NaN for any input with a value beyond ``nan_above`` — real requests have
  such values, its golden inputs (standard normal draws) do not, so its golden check passes;
- ``slow``: computes its hidden layers ``repeat`` times (the same answer, ``repeat``× the work).
"""

from __future__ import annotations

import torch
from torch import nn

FACTORY = "warmstart.bench.rollout_models:build_mlp"


class RolloutMLP(nn.Module):
    def __init__(self, features: int = 64, width: int = 512, depth: int = 4, outputs: int = 16,
                 nan_above: float | None = None, repeat: int = 1) -> None:  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(features, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, outputs)
        self.nan_above = nan_above
        self.repeat = max(1, repeat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.repeat):
            hidden = self.body(x)
        out = self.head(hidden)
        if self.nan_above is not None and bool((x.abs() > self.nan_above).any()):
            return out * float("nan")
        return out


def build_mlp(features: int = 64, width: int = 512, depth: int = 4, outputs: int = 16,
              nan_above: float | None = None, repeat: int = 1) -> nn.Module:  # fmt: skip
    return RolloutMLP(features, width, depth, outputs, nan_above, repeat)
