"""The whole snapshot flow over S3 (moto's server, over HTTP): publish, list, inspect, fetch
into the cache, restore, and pass the golden check; through the library and the CLI."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file, save_model

from warmstart.cli import main
from warmstart.infra.services import free_port
from warmstart.snapshot import catalog
from warmstart.snapshot.cache import SnapshotCache
from warmstart.snapshot.golden import compare_outputs, load_golden, normalize_outputs
from warmstart.snapshot.publish import publish_examples, publish_module
from warmstart.snapshot.restore import restore_model
from warmstart.snapshot.stores.s3 import S3Store
from tests.unit.snapshot import tiny_models as tiny

pytestmark = pytest.mark.integration

BUCKET = "warmstart-flow"


@pytest.fixture
def env(s3_server: Any, tmp_path: Path) -> dict[str, str]:
    prefix = f"flow-{uuid.uuid4().hex[:8]}"
    S3Store(BUCKET, prefix, endpoint_url=s3_server.url).ensure_bucket()
    return {
        "WARMSTART_STORE_URL": f"s3://{BUCKET}/{prefix}",
        "WARMSTART_S3_ENDPOINT_URL": s3_server.url,
        "WARMSTART_CACHE_DIR": str(tmp_path / "cache"),
        "WARMSTART_ALLOWED_ARCHITECTURES": ",".join(tiny.TINY_FACTORIES),
        "WARMSTART_FETCH_PART_BYTES": str(1024 * 1024),
    }


def s3_store(env: dict[str, str]) -> S3Store:
    bucket, _, prefix = env["WARMSTART_STORE_URL"][len("s3://") :].partition("/")
    return S3Store(bucket, prefix, endpoint_url=env["WARMSTART_S3_ENDPOINT_URL"])


def test_publish_fetch_restore_golden(env: dict[str, str], tmp_path: Path) -> None:
    store = s3_store(env)
    [manifest] = publish_examples(store, ["live-events"], show_progress=False)
    assert publish_examples(store, ["live-events"], show_progress=False) == [manifest]  # idempotent
    assert catalog.list_models(store) == ["live-events"]
    assert catalog.resolve_version(store, "live-events") == "v1"

    cache = SnapshotCache(tmp_path / "cache", budget_bytes=64 * 2**20, concurrency=4, part_bytes=128 * 1024)
    local = cache.fetch(store, catalog.read_manifest(store, "live-events", "v1"))
    assert local.downloaded_bytes > manifest.weights.size_bytes
    module = restore_model(local.weights_path, local.manifest)
    inputs, outputs = load_golden(local.golden_path, local.manifest.golden)
    with torch.inference_mode():
        actual = normalize_outputs(module(**inputs))
    check = compare_outputs(actual, outputs, local.manifest.golden.rtol, local.manifest.golden.atol)
    assert check.ok, check.reason
    assert cache.fetch(store, manifest).downloaded_bytes == 0


def test_rollout_alias_over_s3(env: dict[str, str]) -> None:
    store = s3_store(env)
    for i, version in enumerate(["v1", "v2"]):
        torch.manual_seed(i)
        publish_module(
            store, "tiny", version, tiny.build_tiny_mlp(), tiny.MLP, tiny.MLP_INPUTS,
            show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
        )  # fmt: skip
    assert catalog.get_alias(store, "tiny") == "v1"
    catalog.set_alias(store, "tiny", "live", "v2")
    assert catalog.read_resolved(store, "tiny").version == "v2"
    assert catalog.list_aliases(store, "tiny") == {"live": "v2"}


def test_cli_flow(env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Any:
        result = runner.invoke(main, list(args), env=env)
        assert result.exit_code == code, (args, result.output, result.exception)
        return result

    torch.manual_seed(0)
    module = tiny.build_tiny_mlp()
    weights = tmp_path / "tiny.safetensors"
    save_model(module, str(weights))
    golden = tmp_path / "golden-in.safetensors"
    save_file({"x": torch.randn(3, 4)}, str(golden))
    published = run(
        "publish", "tiny", "--version", "v1", "--weights", str(weights), "--factory", tiny.MLP,
        "--inputs", json.dumps(tiny.MLP_INPUTS), "--golden-inputs", str(golden), "--json",
    )  # fmt: skip
    [manifest] = json.loads(published.output)
    assert manifest["model"] == "tiny" and manifest["golden"]["inputs"] == ["x"]

    listing = json.loads(run("ls", "--json").output)
    assert listing[0]["model"] == "tiny" and listing[0]["aliases"] == {"live": "v1"}
    assert listing[0]["versions"][0]["size_bytes"] == weights.stat().st_size
    assert "tiny" in run("ls").output
    assert json.loads(run("inspect", "tiny", "live", "--json").output) == manifest
    assert '"format_version"' in run("inspect", "tiny").output

    fetched = json.loads(run("fetch", "tiny", "--json").output)
    assert fetched["cached"] is False and Path(fetched["weights_path"]).read_bytes() == weights.read_bytes()
    assert json.loads(run("fetch", "tiny", "v1", "--json").output)["cached"] is True
    assert "already cached" in run("fetch", "tiny").output

    # Bad input: one line, exit status 2, a typed error naming the problem.
    bad = run("inspect", "tiny", "v9", code=2)
    assert "SnapshotNotFoundError" in bad.output and "v9" in bad.output
    bad = run("fetch", "../etc", code=2)
    assert "InvalidNameError" in bad.output
    other = tmp_path / "other.safetensors"
    torch.manual_seed(1)
    save_model(tiny.build_tiny_mlp(), str(other))
    bad = run(
        "publish", "tiny", "--version", "v1", "--weights", str(other), "--factory", tiny.MLP,
        "--inputs", json.dumps(tiny.MLP_INPUTS), code=2,
    )  # fmt: skip
    assert "VersionExistsError" in bad.output
    bad = run(
        "publish", "tiny", "--version", "v2", "--weights", str(other), "--factory", "os.path:join",
        "--inputs", json.dumps(tiny.MLP_INPUTS), code=2,
    )  # fmt: skip
    assert "UnregisteredArchitectureError" in bad.output
    assert run("publish", "tiny", code=2).exit_code == 2  # usage error


def test_cli_cache_full(env: dict[str, str]) -> None:
    runner = CliRunner()
    torch.manual_seed(0)
    publish_module(
        s3_store(env), "tiny", "v1", tiny.build_tiny_mlp(), tiny.MLP, tiny.MLP_INPUTS,
        show_progress=False, allowed_architectures=tiny.TINY_FACTORIES,
    )  # fmt: skip
    result = runner.invoke(main, ["fetch", "tiny"], env={**env, "WARMSTART_CACHE_BUDGET_BYTES": "100"})
    assert result.exit_code == 2 and "CacheFullError" in result.output
    assert "WARMSTART_CACHE_BUDGET_BYTES" in result.output


def test_cli_unreachable_endpoint_names_it(env: dict[str, str]) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["ls"], env={**env, "WARMSTART_S3_ENDPOINT_URL": endpoint})
    assert result.exit_code == 2
    assert "StoreUnreachableError" in result.output and endpoint in result.output
