"""Bounded JSON: the depth pre-scan agrees with the parser, and limits raise typed errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmstart.infra.errors import ManifestError
from warmstart.snapshot.jsonlimits import check_tree, json_depth, load_json, short

# Strings full of the characters that could fool a scan: brackets, quotes and backslashes.
tricky_text = st.text(alphabet='[]{}"\\ ,:a\n\u00e9\u2028', max_size=12)
trees = st.recursive(
    st.none() | st.integers() | tricky_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4),
    max_leaves=30,
)


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(trees, st.booleans())
def test_depth_scan_agrees_with_the_tree(tree: Any, ascii_only: bool) -> None:
    text = json.dumps(tree, ensure_ascii=ascii_only, indent=None if ascii_only else 1)
    assert json_depth(text) == depth_of(tree)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("", 0), ("1", 0), ("[]", 1), ('{"a": [1, {"b": []}]}', 4), ('"[[["', 0),
        ('["]\\"["]', 1), ('["\\\\", [[]]]', 3), ('[[["unterminated', 3), ('["a\\', 1),
    ],
)  # fmt: skip
def test_depth_scan_examples(text: str, depth: int) -> None:
    assert json_depth(text) == depth


def test_load_json_refuses_depth_before_parsing() -> None:
    with pytest.raises(ManifestError, match="doc nests .* levels deep, over the limit of 3"):
        load_json("[[[[1]]]]", what="doc", error=ManifestError, max_depth=3)
    assert load_json("[[[1]]]", what="doc", error=ManifestError, max_depth=3) == [[[1]]]


@pytest.mark.parametrize("data", [b"\xff[]", b"{", b"1" * 5000, "[1,]"])
def test_load_json_errors_are_typed(data: bytes | str) -> None:
    with pytest.raises(ManifestError, match="doc is not"):
        load_json(data, what="doc", error=ManifestError)


def test_check_tree_limits() -> None:
    deep: Any = []
    for _ in range(100_000):  # far deeper than any recursion could walk
        deep = [deep]
    with pytest.raises(ManifestError, match="deeper than 8"):
        check_tree(deep, what="t", error=ManifestError, max_depth=8, max_items=10**6)
    with pytest.raises(ManifestError, match="more than 5 values"):
        check_tree(list(range(10)), what="t", error=ManifestError, max_depth=8, max_items=5)
    with pytest.raises(ManifestError, match="keys must be strings"):
        check_tree({1: 2}, what="t", error=ManifestError, max_depth=8, max_items=10)
    with pytest.raises(ManifestError, match="holds a set"):
        check_tree({"a": {1}}, what="t", error=ManifestError, max_depth=8, max_items=10)
    check_tree({"a": [1, 2.5, None, True, "x", (1, 2)]}, what="t", error=ManifestError, max_depth=3, max_items=10)


def test_short_keeps_messages_short() -> None:
    assert short("x" * 10_000) == repr("x" * 61)[:60] + "…"
    assert short(list(range(10**6))) == "<list of 1000000 entries>"
    assert short(3) == "3"
