"""The naive cold start of ``warmstart bench serve``, in a fresh process: what serving a model
costs without warmstart when no process holds it.

Run by :mod:`warmstart.bench.serve` as ``python -m warmstart.bench.serve_probe SPEC_JSON``. The process imports
torch, ``torch.load(weights_only=True)``\\ s a ``torch.save`` state-dict file, builds the model
the usual way (the factory with its random initialisation, then ``load_state_dict``), answers
one inference, and prints the answer as one JSON line on stdout. The parent times everything
from starting the process to reading that line; nothing in here is excluded, which is what
the issue asks of the baseline.

The load itself is :mod:`warmstart.bench.probe`'s ``torch_load`` path, so both benchmarks measure the
same baseline. Nothing else is imported before the answer: every extra import would count
against the baseline.
"""

from __future__ import annotations

import sys

import torch

from warmstart.bench.probe import flatten_outputs, prepare_torch_load


def answer_once(spec: dict[str, object]) -> dict[str, object]:
    """Load the model the naive way and run one inference.

    Args:
        spec: ``weights_path`` (a ``torch.save`` state dict), ``factory`` (``pkg.mod:fn``),
            ``factory_kwargs``, and ``inputs``: ``{name: {"dtype": ..., "data": nested list}}``.

    Returns:
        ``{"outputs": [nested lists, one per output tensor]}``.
    """
    load = prepare_torch_load(spec)  # imports the factory's module
    raw_inputs = spec["inputs"]
    assert isinstance(raw_inputs, dict)
    inputs = {name: torch.tensor(v["data"], dtype=getattr(torch, v["dtype"])) for name, v in raw_inputs.items()}
    model = load()
    with torch.inference_mode():
        output = model(**inputs)
    return {"outputs": [t.tolist() for t in flatten_outputs(output)]}


def main(argv: list[str]) -> int:
    from warmstart.bench.report import probe_main

    return probe_main("serve_probe", answer_once, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
