"""Safe names for models and versions, and the object keys built from them.

A model name or version ends up in S3 keys, cache paths and Celery queue names, so it is
held to a pattern that cannot escape a prefix: no ``/``, no ``..``, bounded length.
"""

from __future__ import annotations

import re

from warmstart.infra.errors import InvalidNameError

#: Matched with ``fullmatch``: ``$`` would also accept a trailing newline.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_NAME_LENGTH = 64

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
GOLDEN_FILE = "golden.safetensors"
ALIAS_FILE = "alias.json"
SNAPSHOTS_PREFIX = "snapshots"


def validate_name(value: object, what: str = "model name") -> str:
    """Return ``value`` if it is a safe model name or version.

    Raises:
        InvalidNameError: not a string, too long, or containing anything but letters, digits,
            ``.``, ``_`` and ``-`` (and ``..`` is refused outright).
    """
    if not isinstance(value, str):
        raise InvalidNameError(f"{what} must be a string, got {type(value).__name__}")
    if ".." in value or not NAME_PATTERN.fullmatch(value):
        raise InvalidNameError(
            f"{what} {value!r} is not allowed: use 1-{MAX_NAME_LENGTH} letters, digits, '.', "
            "'_' or '-', starting with a letter or digit, with no '/' and no '..'"
        )
    return value


def version_prefix(model: str, version: str) -> str:
    """Key prefix of one published version: ``snapshots/<model>/<version>``."""
    return f"{SNAPSHOTS_PREFIX}/{validate_name(model)}/{validate_name(version, 'version')}"


def version_key(model: str, version: str, filename: str) -> str:
    return f"{version_prefix(model, version)}/{filename}"


def model_prefix(model: str) -> str:
    return f"{SNAPSHOTS_PREFIX}/{validate_name(model)}"


def alias_key(model: str, alias: str) -> str:
    """Key of a movable alias (``live`` by default) of a model: ``snapshots/<m>/_aliases/<a>.json``."""
    return f"{model_prefix(model)}/_aliases/{validate_name(alias, 'alias')}.json"
