"""``warmstart services``: a private Redis and S3 a user can point a worker and clients at."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import redis

from warmstart.infra.errors import StoreError
from warmstart.snapshot.stores.s3 import S3Store


def _exports(process: subprocess.Popen[str], timeout_s: float = 60.0) -> dict[str, str]:
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = re.match(r"export (\w+)=(\S+)", line)
        if match:
            found[match.group(1)] = match.group(2).strip("'")
            if "AWS_DEFAULT_REGION" in found:
                return found
    raise AssertionError(f"no exports printed; stderr: {process.stderr.read() if process.stderr else ''}")


def test_services_start_redis_and_s3_with_the_bucket_and_stop_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "warmstart.cli", "services", "--bucket", "handmade"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        env = _exports(process)
        assert env["WARMSTART_STORE_URL"] == "s3://handmade/models"
        client = redis.Redis.from_url(env["WARMSTART_REDIS_URL"])
        assert client.ping()
        ls = subprocess.run(
            [sys.executable, "-m", "warmstart.cli", "ls"], env={**os.environ, **env},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert ls.returncode == 0, ls.stderr
        assert "no models in s3://handmade/models" in ls.stdout
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        with pytest.raises(redis.ConnectionError):
            client.ping()
    finally:
        if process.poll() is None:
            process.kill()


def test_a_missing_bucket_names_the_services_command(s3_server: object) -> None:
    store = S3Store("no-such-bucket", "models", endpoint_url=s3_server.url)  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="warmstart services"):
        store.list_keys("snapshots/")
