"""JSON from a bucket, parsed within bounds that the document cannot choose.

``json.loads`` recurses once per level of nesting, so a manifest, alias or safetensors header
nested 100,000 deep used to escape as an untyped ``RecursionError``. :func:`load_json`
measures the nesting on the raw text first, with no recursion and in linear time, and refuses
anything deeper than the limit with the caller's typed error. :func:`check_tree` bounds a tree
that is already decoded (a manifest handed over as a dict), iteratively.

:func:`short` keeps values from a hostile document out of error messages at full length.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from warmstart.infra.errors import WarmstartError

#: How deeply arrays and objects may nest in any JSON document read from a store. Ours nest
#: at most 4 levels, plus what a factory's kwargs or the metadata hold.
MAX_JSON_DEPTH = 32

# After escapes are removed, a JSON string is quote, no quotes, quote; an unterminated one
# runs to the end of the text. Matching that case too (instead of failing and retrying at
# every later quote) keeps the scan linear.
_STRING = re.compile(r'"[^"]*(?:"|\Z)')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as int8
_CHUNK = 1 << 20


def json_depth(text: str, stop_above: int | None = None) -> int:
    """How deeply arrays and objects nest in ``text`` (brackets inside strings do not count).

    Agrees with the JSON grammar on every prefix that ``json.loads`` accepts, so it never
    under-counts what the parser would recurse into. Malformed text gets some count; the
    parser then rejects it. Linear time: about 0.5 s for the worst 16 MB.

    Args:
        stop_above: return as soon as the depth exceeds this (the count is then a lower bound).
    """
    # Backslashes pair up left to right inside strings, as JSON reads them: dropping ``\\``
    # pairs and then ``\"`` pairs leaves only the quotes that open or close a string. (A
    # backslash outside a string is a syntax error at that point; the prefix before it reads
    # the same either way.)
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", unescaped))
    steps = np.frombuffer(brackets.encode("ascii").translate(_STEPS), dtype=np.int8)
    depth = deepest = 0
    for start in range(0, len(steps), _CHUNK):  # bounded memory for a 100 MB header
        running = np.cumsum(steps[start : start + _CHUNK], dtype=np.int64) + depth
        deepest = max(deepest, int(running.max()))
        if stop_above is not None and deepest > stop_above:
            break
        depth = int(running[-1])
    return deepest


def load_json(
    data: bytes | bytearray | str, *, what: str, error: type[WarmstartError], max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Decode UTF-8 JSON, refusing nesting deeper than ``max_depth`` before parsing it.

    Args:
        what: names the document in messages ("manifest", "alias 'snapshots/...'").
        error: the typed error to raise.

    Raises:
        error: not UTF-8, nested too deeply, or not valid JSON.
    """
    if isinstance(data, (bytes, bytearray)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{what} is not UTF-8 text (bad byte at offset {e.start}); republish it") from None
    else:
        text = data
    depth = json_depth(text, stop_above=max_depth)
    if depth > max_depth:
        raise error(
            f"{what} nests arrays or objects at least {depth} levels deep, over the limit of "
            f"{max_depth}: it is not a document warmstart wrote; republish it"
        )
    try:
        return json.loads(text)
    except RecursionError:  # cannot happen within the limit; kept typed if the stack is short
        raise error(f"{what} nests too deeply to parse (limit {max_depth}); republish it") from None
    except ValueError as e:  # also the int-digits limit of huge numbers
        raise error(f"{what} is not valid JSON: {str(e)[:200]}; republish it") from None


_SCALARS = (str, int, float, bool, type(None))


def check_tree(
    value: Any, *, what: str, error: type[WarmstartError], max_depth: int, max_items: int
) -> None:
    """Require a decoded tree to be plain JSON (dicts with string keys, lists, scalars, finite
    numbers: a NaN would not survive a round trip, NaN != NaN), at
    most ``max_depth`` containers deep and ``max_items`` values in all. Iterative: a tree of
    any depth is measured without recursion.

    Raises:
        error: naming the limit that was exceeded or the value that is not JSON.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    items = 0
    while stack:
        node, depth = stack.pop()
        items += 1
        if items > max_items:
            raise error(f"{what} holds more than {max_items} values, over the limit; make it smaller")
        if isinstance(node, float) and not math.isfinite(node):
            raise error(f"{what} must be plain JSON, which has no NaN or Infinity, but holds {node}")
        if isinstance(node, _SCALARS):
            continue
        if not isinstance(node, (dict, list, tuple)):
            raise error(f"{what} must be plain JSON, but holds a {type(node).__name__}")
        if depth + 1 > max_depth:
            raise error(f"{what} nests deeper than {max_depth} levels, over the limit; flatten it")
        if isinstance(node, dict):
            if not all(isinstance(k, str) for k in node):
                raise error(f"{what} must be plain JSON: object keys must be strings")
            stack.extend((child, depth + 1) for child in node.values())
        else:
            stack.extend((child, depth + 1) for child in node)


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters, for messages about hostile data."""
    if isinstance(value, (list, tuple, dict)) and len(value) > 8:
        return f"<{type(value).__name__} of {len(value)} entries>"
    text = repr(value[: limit + 1] if isinstance(value, str) else value)
    return text if len(text) <= limit else f"{text[:limit]}…"
