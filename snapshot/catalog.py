"""What a store holds: models, their published versions, and their aliases.

A version exists only when its ``manifest.json`` does (publish writes it last). An alias
(``live`` by default) is a small JSON object ``{"version": ..., "updated_at": ...}`` at
``snapshots/<model>/_aliases/<alias>.json`` that rollouts move; this module is the one place
that reads and writes aliases.

A bucket may hold more than snapshots. Keys under ``snapshots/`` that do not fit the layout
(names that are not safe names, files directly under ``snapshots/``, other depths) are skipped
with a logged warning, and so are unreadable manifests and aliases when listing: one stray
object must not break ``warmstart ls`` for every model. Reading one named version or alias
still raises. Manifests and aliases are read with a size bound checked before their bytes are.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from warmstart.infra.errors import (
    InvalidNameError,
    ManifestError,
    ObjectTooLargeError,
    SnapshotNotFoundError,
)
from warmstart.snapshot.jsonlimits import load_json, short
from warmstart.snapshot.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from warmstart.snapshot.names import (
    MANIFEST_FILE,
    SNAPSHOTS_PREFIX,
    alias_key,
    model_prefix,
    validate_name,
    version_key,
)
from warmstart.snapshot.stores.base import SnapshotStore

log = logging.getLogger(__name__)

LIVE_ALIAS = "live"
_ALIASES_DIR = "_aliases"
#: An alias is ``{"version": ..., "updated_at": ...}``: well under 1 KiB.
MAX_ALIAS_BYTES = 64 * 1024
_STRAY_EXAMPLES = 5


def utc_now_iso() -> str:
    """The current UTC time as ``2026-01-31T12:00:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _natural_key(name: str) -> list[Any]:
    """Sort ``v2`` before ``v10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _is_safe(name: str) -> bool:
    try:
        validate_name(name)
    except InvalidNameError:
        return False
    return True


def _manifest_keys(keys: Iterable[str]) -> list[tuple[str, str]]:
    """``(model, version)`` of every ``snapshots/<model>/<version>/manifest.json`` among
    ``keys``; keys that do not fit the layout are skipped, with one warning for all of them."""
    found: list[tuple[str, str]] = []
    stray: list[str] = []
    for key in keys:
        parts = key.split("/")
        if len(parts) == 4 and _is_safe(parts[1]) and (parts[2] == _ALIASES_DIR or _is_safe(parts[2])):
            if parts[3] == MANIFEST_FILE and parts[2] != _ALIASES_DIR:
                found.append((parts[1], parts[2]))
        else:
            stray.append(key)
    if stray:
        log.warning(
            "skipped %d stray keys under %s/ that are not snapshot objects (e.g. %s); they name no "
            "safe model/version, or lie at another depth: remove them from the store",
            len(stray), SNAPSHOTS_PREFIX, ", ".join(short(k, 80) for k in stray[:_STRAY_EXAMPLES]),
        )  # fmt: skip
    return found


def list_models(store: SnapshotStore) -> list[str]:
    """Names of the models with at least one published version, sorted (stray keys skipped)."""
    models = {model for model, _ in _manifest_keys(store.list_keys(f"{SNAPSHOTS_PREFIX}/"))}
    return sorted(models, key=_natural_key)


def list_versions(store: SnapshotStore, model: str) -> list[str]:
    """Published versions of ``model`` (those whose manifest exists), in natural order; stray
    keys are skipped.

    Raises:
        InvalidNameError: ``model`` is not a safe name.
    """
    keys = store.list_keys(f"{model_prefix(model)}/")
    versions = [v for m, v in _manifest_keys(keys) if m == model]
    return sorted(versions, key=_natural_key)


def read_manifest(store: SnapshotStore, model: str, version: str) -> Manifest:
    """The validated manifest of one published version.

    Raises:
        InvalidNameError: a name is not safe.
        SnapshotNotFoundError: no such version; the message lists the versions that exist.
        ManifestError: the manifest is malformed, or describes another model/version.
    """
    key = version_key(model, version, MANIFEST_FILE)
    try:
        raw = store.get_bytes(key, max_bytes=MAX_MANIFEST_BYTES)
    except ObjectTooLargeError as e:
        raise ManifestError(
            f"manifest at {key!r} is over the {MAX_MANIFEST_BYTES}-byte limit: it is not a manifest "
            "warmstart wrote; republish the snapshot"
        ) from e
    except SnapshotNotFoundError as e:
        existing = list_versions(store, model)
        hint = f"published versions: {existing}" if existing else "the model has no published versions"
        raise SnapshotNotFoundError(
            f"model {model!r} has no version {version!r} in {store.describe()}; {hint}"
        ) from e
    manifest = parse_manifest(raw)
    if (manifest.model, manifest.version) != (model, version):
        raise ManifestError(
            f"manifest at {key!r} describes {manifest.model}/{manifest.version}, not "
            f"{model}/{version}: the snapshot was copied to the wrong place; republish it"
        )
    return manifest


# --- aliases ----------------------------------------------------------------------------


def get_alias(store: SnapshotStore, model: str, alias: str = LIVE_ALIAS) -> str | None:
    """The version an alias points at, or None when the alias is not set.

    Raises:
        InvalidNameError: a name is not safe.
        ManifestError: the alias object is malformed, too large or too deeply nested.
    """
    key = alias_key(model, alias)
    try:
        raw = store.get_bytes(key, max_bytes=MAX_ALIAS_BYTES)
    except SnapshotNotFoundError:
        return None
    except ObjectTooLargeError as e:
        raise ManifestError(
            f"alias {key!r} is over the {MAX_ALIAS_BYTES}-byte limit: set it again with `set_alias`"
        ) from e
    obj = load_json(raw, what=f"alias {key!r}", error=ManifestError)
    if not isinstance(obj, dict) or "version" not in obj:
        raise ManifestError(
            f"alias {key!r} is not a JSON object with a 'version': set it again with "
            f"`set_alias` (or republish)"
        )
    version = obj["version"]
    try:
        return validate_name(version, "version")
    except InvalidNameError as e:
        raise ManifestError(f"alias {key!r} points at an unsafe version: {e}") from e


def list_aliases(store: SnapshotStore, model: str) -> dict[str, str]:
    """All readable aliases of ``model``: alias name -> version. Stray objects in the aliases
    folder are skipped, and malformed aliases too (with a logged warning)."""
    aliases: dict[str, str] = {}
    prefix = f"{model_prefix(model)}/{_ALIASES_DIR}/"
    for key in store.list_keys(prefix):
        name = key[len(prefix) :]
        if name.endswith(".json") and "/" not in name:
            try:
                version = get_alias(store, model, name[: -len(".json")])
            except InvalidNameError:
                continue  # a stray object in the aliases folder, not ours
            except ManifestError as e:
                log.warning("skipped alias %s of model %r: %s", short(key, 120), model, e)
                continue
            if version is not None:
                aliases[name[: -len(".json")]] = version
    return aliases


def set_alias(store: SnapshotStore, model: str, alias: str, version: str) -> None:
    """Point ``alias`` of ``model`` at a published ``version`` (one atomic put).

    Raises:
        InvalidNameError: a name is not safe.
        SnapshotNotFoundError: the version is not published (the alias is left unchanged).
    """
    read_manifest(store, model, version)  # refuse to point at nothing
    body = {"version": version, "updated_at": utc_now_iso()}
    store.put_bytes(alias_key(model, alias), (json.dumps(body) + "\n").encode())


def resolve_version(store: SnapshotStore, model: str, ref: str = LIVE_ALIAS) -> str:
    """The version that ``ref`` names: an alias if one of that name is set, else a version.

    Raises:
        InvalidNameError: a name is not safe.
        SnapshotNotFoundError: neither an alias nor a published version; the message lists
            both.
    """
    validate_name(ref, "version or alias")
    aliased = get_alias(store, model, ref)
    if aliased is not None:
        return aliased
    if store.exists(version_key(model, ref, MANIFEST_FILE)):
        return ref
    raise SnapshotNotFoundError(
        f"model {model!r} has no alias or version {ref!r} in {store.describe()}; versions: "
        f"{list_versions(store, model)}, aliases: {sorted(list_aliases(store, model))}"
    )


# --- summaries (for `warmstart ls`) ------------------------------------------------------


def summarize(store: SnapshotStore, model: str | None = None) -> list[dict[str, Any]]:
    """Models with their versions, sizes and aliases, as plain JSON-ready data.

    Args:
        model: only this model (its versions must exist), or every model when None.

    Versions whose manifest cannot be read are left out, with a logged warning.

    Raises:
        SnapshotNotFoundError: ``model`` is given but has no published versions.
    """
    models = [model] if model is not None else list_models(store)
    out = []
    for name in models:
        versions = list_versions(store, name)
        if model is not None and not versions:
            raise SnapshotNotFoundError(
                f"model {name!r} has no published versions in {store.describe()}; models: "
                f"{list_models(store)}"
            )
        rows = []
        for version in versions:
            try:
                manifest = read_manifest(store, name, version)
            except (ManifestError, InvalidNameError) as e:
                # One unreadable manifest must not hide every other model from `ls`.
                log.warning("skipped %s/%s in the listing: %s", name, version, e)
                continue
            rows.append(
                {
                    "version": version,
                    "created_at": manifest.created_at,
                    "architecture": manifest.architecture.factory,
                    "size_bytes": manifest.weights.size_bytes,
                    "sha256": manifest.weights.sha256,
                }
            )
        out.append({"model": name, "aliases": list_aliases(store, name), "versions": rows})
    return out


def read_resolved(store: SnapshotStore, model: str, ref: str = LIVE_ALIAS) -> Manifest:
    """The manifest of the version that ``ref`` (an alias or a version) names.

    Raises:
        As :func:`resolve_version` and :func:`read_manifest`.
    """
    return read_manifest(store, model, resolve_version(store, model, ref))
