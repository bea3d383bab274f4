"""Small helpers shared by the tests: polling for a condition, and a plain HTTP GET."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout_s: float = 30.0, interval_s: float = 0.1, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; its value, or AssertionError after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"{what} not met within {timeout_s}s")


def http_get(url: str) -> tuple[int, bytes]:
    """``(status, body)`` of a GET; an HTTP error is a status too, and ``(0, b"")`` means
    nothing listens there (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""
