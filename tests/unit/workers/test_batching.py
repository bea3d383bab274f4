"""Dynamic batching: every request gets exactly its own answer, shorter requests are padded
where the spec declares a pad, and a bad request fails alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from warmstart.snapshot.manifest import InputSpec
from warmstart.workers.batching import Batcher

IDS = InputSpec("ids", "int64", ("batch", "seq"), value_range=(-1, 100), pad=0)
MASK = InputSpec("mask", "int64", ("batch", "seq"), value_range=(0, 2), pad=0)
X = InputSpec("x", "float32", ("batch", 3))


class Recorder:
    """A forward that records the batch sizes it saw and refuses any id of -1."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, inputs):  # type: ignore[no-untyped-def]
        first = next(iter(inputs.values()))
        with self.lock:
            self.batches.append(int(first.shape[0]))
        if "ids" in inputs:
            if bool((inputs["ids"] == -1).any()):
                raise ValueError("id -1")
            ids, mask = inputs["ids"], inputs["mask"]
            hidden = (ids * 10 + torch.arange(ids.shape[1])).to(torch.float32).unsqueeze(-1) * mask.unsqueeze(-1)
            return {"hidden": hidden, "total": hidden.sum(dim=(1, 2))}
        return {"y": inputs["x"] * 2}


def run_all(batcher: Batcher, forward: Recorder, requests: list[dict], specs) -> list:  # type: ignore[no-untyped-def]
    def one(inputs):  # type: ignore[no-untyped-def]
        try:
            return batcher.run("m", inputs, specs, forward, max_batch=len(requests), max_wait_s=30, timeout_s=30)
        except Exception as e:  # noqa: BLE001
            return e

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_concurrent_requests_run_as_one_forward_and_get_their_own_rows() -> None:
    forward = Recorder()
    requests = [{"x": torch.full((1 + i % 2, 3), float(i))} for i in range(8)]
    answers = run_all(Batcher(), forward, requests, [X])
    assert forward.batches == [sum(r["x"].shape[0] for r in requests)]  # one forward for all
    for request, (outputs, batch_size) in zip(requests, answers):
        assert batch_size == 8
        torch.testing.assert_close(outputs["y"], request["x"] * 2)


def test_shorter_sequences_are_padded_and_cut_back() -> None:
    forward = Recorder()
    requests = [
        {"ids": torch.randint(0, 100, (1, n)), "mask": torch.ones(1, n, dtype=torch.int64)} for n in (3, 7, 5, 7)
    ]
    answers = run_all(Batcher(), forward, requests, [IDS, MASK])
    assert len(forward.batches) == 1
    for request, (outputs, _) in zip(requests, answers):
        alone = forward(request)
        assert outputs["hidden"].shape == alone["hidden"].shape  # its own length, not 7
        torch.testing.assert_close(outputs["hidden"], alone["hidden"])
        torch.testing.assert_close(outputs["total"], alone["total"])


def test_without_a_pad_other_lengths_go_in_separate_batches() -> None:
    forward = Recorder()
    no_pad = [InputSpec("ids", "int64", ("batch", "seq")), InputSpec("mask", "int64", ("batch", "seq"))]
    requests = [{"ids": torch.ones(1, n, dtype=torch.int64), "mask": torch.ones(1, n, dtype=torch.int64)} for n in (3, 4)]
    batcher = Batcher()

    def one(inputs):  # type: ignore[no-untyped-def]
        return batcher.run("m", inputs, no_pad, forward, max_batch=2, max_wait_s=0.05, timeout_s=30)

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(one, requests))
    assert sorted(forward.batches) == [1, 1] and [b for _, b in answers] == [1, 1]


def test_a_bad_request_in_a_batch_fails_alone() -> None:
    forward = Recorder()
    requests = [{"ids": torch.full((1, 4), i, dtype=torch.int64), "mask": torch.ones(1, 4, dtype=torch.int64)} for i in range(6)]
    requests[2]["ids"][0, 1] = -1
    answers = run_all(Batcher(), forward, requests, [IDS, MASK])
    assert isinstance(answers[2], ValueError)
    for i, answer in enumerate(answers):
        if i != 2:
            outputs, _ = answer
            torch.testing.assert_close(outputs["hidden"], forward(requests[i])["hidden"])


def test_batching_off_runs_each_request_by_itself() -> None:
    forward = Recorder()
    outputs, size = Batcher().run("m", {"x": torch.ones(2, 3)}, [X], forward, max_batch=1, max_wait_s=1, timeout_s=1)
    assert size == 1 and forward.batches == [2]
    torch.testing.assert_close(outputs["y"], torch.full((2, 3), 2.0))


@pytest.mark.parametrize("bad", [{"max_batch": 0, "max_wait_ms": 1}, {"max_batch": 4}, {"max_batch": 4, "max_wait_ms": -1}])
def test_bad_batching_in_a_manifest_is_refused(bad: dict) -> None:  # type: ignore[type-arg]
    from warmstart.infra.errors import ManifestError
    from warmstart.snapshot.manifest import parse_batching

    with pytest.raises(ManifestError, match="batching"):
        parse_batching(bad)


def test_settings_override_the_manifests_batching() -> None:
    from types import SimpleNamespace

    from warmstart.infra.settings import load_settings
    from warmstart.workers.batching import batching_of

    manifest = SimpleNamespace(batching={"max_batch": 16, "max_wait_ms": 4})
    assert batching_of(manifest, load_settings()) == (16, 4.0)  # type: ignore[arg-type]
    assert batching_of(manifest, load_settings(max_batch=1, max_wait_ms=0)) == (1, 0.0)  # type: ignore[arg-type]
    assert batching_of(SimpleNamespace(batching={}), load_settings()) == (1, 0.0)  # type: ignore[arg-type]
