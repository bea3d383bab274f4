"""Which outputs a model answers with.

A model may return more than a client needs (a Hugging Face encoder returns
``last_hidden_state`` *and* ``pooler_output``), or a structure with nested values that cannot
be sent as named tensors. A manifest's ``outputs`` names the outputs to keep; publish records
golden outputs for those only, and :func:`~warmstart.snapshot.restore.restore_model` wraps the
module in :class:`SelectOutputs`, so warm-up, health checks and requests all see exactly those
and the worker encodes nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from warmstart.infra.errors import ManifestError
from warmstart.snapshot.golden import normalize_outputs


def _top_level(output: object) -> dict[str, object]:
    """A model's output by name without requiring every value to be a tensor."""
    if isinstance(output, torch.Tensor):
        return {"output": output}
    if isinstance(output, Mapping):
        return {str(k): v for k, v in output.items()}
    if isinstance(output, (tuple, list)):
        return {f"output{i}": v for i, v in enumerate(output)}
    return {}


def select_outputs(output: object, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The named tensors of ``output`` (all of them, normalised, when ``names`` is empty).

    Raises:
        ManifestError: a name the model does not return, or whose value is not a tensor
            (the message lists the tensor outputs there are, to choose with ``--outputs``).
        SnapshotError: no names, and the output is not a tensor / tuple / dict of tensors.
    """
    if not names:
        return normalize_outputs(output)
    found = _top_level(output)
    tensors = sorted(k for k, v in found.items() if isinstance(v, torch.Tensor))
    bad = [n for n in names if not isinstance(found.get(n), torch.Tensor)]
    if bad:
        raise ManifestError(
            f"the model returns no tensor output named {bad}: its tensor outputs are {tensors}; "
            "choose among them with --outputs (publish's outputs=...)"
        )
    return {n: found[n] for n in names}  # type: ignore[misc]


class SelectOutputs(nn.Module):
    """A restored module that answers with the manifest's ``outputs`` only, as named tensors.

    The wrapped module is ``self.module`` (its parameters keep their storage: zero-copy
    still holds, under the ``module.`` prefix).
    """

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.names = tuple(names)
        self.training = False  # the restored module is in eval mode already

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return select_outputs(self.module(**inputs), self.names)
