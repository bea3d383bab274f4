"""Shared fixtures: real services on free loopback ports, started and stopped by the tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from warmstart.infra.services import EmbeddedRedis, EmbeddedS3, apply_test_credentials


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A private redis-server for the whole session (tests flush what they use)."""
    with EmbeddedRedis() as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[EmbeddedS3]:
    """moto's S3 server over HTTP, in a child process, for the whole session."""
    apply_test_credentials()
    with EmbeddedS3() as server:
        yield server  # type: ignore[misc]
