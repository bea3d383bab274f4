"""Small architectures for tests, registered per test through WARMSTART_ALLOWED_ARCHITECTURES.

They are real models: ``flaky`` really computes wrong (or non-finite) outputs while its flag
file exists, which is how tests make a healthy model start failing without touching our code.
"""

from __future__ import annotations

import os
import signal
import time

import torch
from torch import nn

TINY = "tests.models:build_tiny"
FLAKY = "tests.models:build_flaky"
BUFFERED = "tests.models:build_buffered"


class Tiny(nn.Module):
    def __init__(self, features: int = 8, outputs: int = 4, delay_s: float = 0.0, crash_on: float | None = None,
                 nan_above: float | None = None, raise_above: float | None = None,
                 delay_above: float | None = None, branch_on_batch: bool = False,
                 rows_in_python: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.linear = nn.Linear(features, outputs)
        self.delay_s = delay_s
        self.crash_on = crash_on
        self.nan_above = nan_above
        self.raise_above = raise_above
        self.delay_above = delay_above  # delay_s only on inputs above this (None: on every input)
        self.branch_on_batch = branch_on_batch  # code that depends on the batch size (compile tests)
        self.rows_in_python = rows_in_python  # counts its rows in Python: no unbacked batch (compile tests)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delay_s and (self.delay_above is None or bool((x.abs() > self.delay_above).any())):
            time.sleep(self.delay_s)  # stands for a slow model, so a test can kill mid-inference
        if self.crash_on is not None and bool((x == self.crash_on).any()):
            os.kill(os.getpid(), signal.SIGKILL)  # stands for an input that crashes the process
        if self.nan_above is not None and bool((x.abs() > self.nan_above).any()):
            return self.linear(x) * float("nan")  # a bad version: NaN on inputs its goldens lack
        if self.raise_above is not None and bool((x.abs() > self.raise_above).any()):
            raise ValueError(f"an input above {self.raise_above}")  # a bad version: raises on them
        if self.rows_in_python:
            rows = len(torch.arange(x.shape[0]).tolist())  # torch must know the size
            return self.linear(x) * (rows / x.shape[0])
        if self.branch_on_batch and x.shape[0] == 1:
            return self.linear(x[0]).unsqueeze(0)  # the same answer, by another path
        return self.linear(x)


class Flaky(Tiny):
    """Misbehaves while ``flag_path`` exists: ``offset`` adds 1, ``nan`` answers NaN, ``raise``
    raises, ``block`` waits until the flag is removed (a hung forward, at most a minute)."""

    def __init__(self, flag_path: str, features: int = 8, outputs: int = 4) -> None:
        super().__init__(features, outputs)
        self.flag_path = flag_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        try:
            with open(self.flag_path) as flag:
                mode = flag.read().strip()
        except FileNotFoundError:
            return out
        if mode == "raise":
            raise RuntimeError("flaky model raised on purpose")
        if mode == "block":
            deadline = time.monotonic() + 60
            while os.path.exists(self.flag_path) and time.monotonic() < deadline:
                time.sleep(0.01)
            return out
        return out * float("nan") if mode == "nan" else out + 1.0


class Buffered(Tiny):
    """Tiny weights, plus a non-persistent buffer that its kwargs size (not in the file)."""

    def __init__(self, buffer_elems: int, features: int = 8, outputs: int = 4) -> None:
        super().__init__(features, outputs)
        self.register_buffer("table", torch.zeros(buffer_elems), persistent=False)


def build_tiny(features: int = 8, outputs: int = 4, delay_s: float = 0.0, crash_on: float | None = None,
               nan_above: float | None = None, raise_above: float | None = None,
               delay_above: float | None = None, branch_on_batch: bool = False,
               rows_in_python: bool = False) -> nn.Module:  # fmt: skip
    return Tiny(features, outputs, delay_s, crash_on, nan_above, raise_above, delay_above, branch_on_batch,
                rows_in_python)


def build_flaky(flag_path: str, features: int = 8, outputs: int = 4) -> nn.Module:
    return Flaky(flag_path, features, outputs)


def build_buffered(buffer_elems: int, features: int = 8, outputs: int = 4) -> nn.Module:
    return Buffered(buffer_elems, features, outputs)
