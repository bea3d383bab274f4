"""Safe names and the keys built from them."""

from __future__ import annotations

import pytest

from warmstart.infra.errors import InvalidNameError
from warmstart.snapshot.names import alias_key, model_prefix, validate_name, version_key, version_prefix


@pytest.mark.parametrize("name", ["m", "short-form", "v1", "v1.2.3", "A_b-9", "x" * 64, "0day"])
def test_safe_names_pass(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "../etc", "..", "a..b", ".hidden", "-dash", "_under", "x" * 65, "sp ace",
     "tab\t", "new\nline", "é", "a\\b", "a:b", "*", "m\n", "v1\n", "x" * 64 + "\n"],
)  # fmt: skip
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidNameError, match="not allowed"):
        validate_name(name)


@pytest.mark.parametrize("value", [None, 1, b"m", ["m"]])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(InvalidNameError, match="must be a string"):
        validate_name(value)


def test_message_names_what_was_wrong() -> None:
    with pytest.raises(InvalidNameError, match="version 'a/b'"):
        validate_name("a/b", "version")


def test_keys() -> None:
    assert model_prefix("m") == "snapshots/m"
    assert version_prefix("m", "v1") == "snapshots/m/v1"
    assert version_key("m", "v1", "manifest.json") == "snapshots/m/v1/manifest.json"
    assert alias_key("m", "live") == "snapshots/m/_aliases/live.json"


@pytest.mark.parametrize(
    "build",
    [lambda: version_key("../m", "v1", "f"), lambda: version_key("m", "v/1", "f"),
     lambda: alias_key("m", "../live"), lambda: model_prefix("a/b")],
)  # fmt: skip
def test_keys_refuse_unsafe_parts(build: object) -> None:
    with pytest.raises(InvalidNameError):
        build()  # type: ignore[operator]
