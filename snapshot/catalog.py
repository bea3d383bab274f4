"""What a store holds: models, their published versions, and their aliases.

A version exists only when its ``manifest.json`` does (publish writes it last). An alias
(``live`` by default) is a small JSON object ``{"version": ..., "updated_at": ...}`` at
``snapshots/<model>/_aliases/<alias>.json`` that rollouts move; this module is the one place
that reads and writes aliases.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

from warmstart.infra.errors import InvalidNameError, ManifestError, SnapshotNotFoundError
from warmstart.snapshot.manifest import Manifest, parse_manifest
from warmstart.snapshot.names import (
    MANIFEST_FILE,
    SNAPSHOTS_PREFIX,
    alias_key,
    model_prefix,
    validate_name,
    version_key,
)
from warmstart.snapshot.stores.base import SnapshotStore

LIVE_ALIAS = "live"
_ALIASES_DIR = "_aliases"


def utc_now_iso() -> str:
    """The current UTC time as ``2026-01-31T12:00:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _natural_key(name: str) -> list[Any]:
    """Sort ``v2`` before ``v10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_models(store: SnapshotStore) -> list[str]:
    """Names of the models with at least one published version, sorted."""
    models: set[str] = set()
    for key in store.list_keys(f"{SNAPSHOTS_PREFIX}/"):
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == MANIFEST_FILE and parts[2] != _ALIASES_DIR:
            models.add(parts[1])
    return sorted(models, key=_natural_key)


def list_versions(store: SnapshotStore, model: str) -> list[str]:
    """Published versions of ``model`` (those whose manifest exists), in natural order.

    Raises:
        InvalidNameError: ``model`` is not a safe name.
    """
    versions = []
    for key in store.list_keys(f"{model_prefix(model)}/"):
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == MANIFEST_FILE and parts[2] != _ALIASES_DIR:
            versions.append(parts[2])
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
        raw = store.get_bytes(key)
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
        ManifestError: the alias object is malformed.
    """
    key = alias_key(model, alias)
    try:
        raw = store.get_bytes(key)
    except SnapshotNotFoundError:
        return None
    try:
        obj = json.loads(raw)
        version = obj["version"]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
        raise ManifestError(
            f"alias {key!r} is not a JSON object with a 'version': set it again with "
            f"`set_alias` (or republish)"
        ) from e
    try:
        return validate_name(version, "version")
    except InvalidNameError as e:
        raise ManifestError(f"alias {key!r} points at an unsafe version: {e}") from e


def list_aliases(store: SnapshotStore, model: str) -> dict[str, str]:
    """All aliases of ``model``: alias name -> version."""
    aliases: dict[str, str] = {}
    prefix = f"{model_prefix(model)}/{_ALIASES_DIR}/"
    for key in store.list_keys(prefix):
        name = key[len(prefix) :]
        if name.endswith(".json") and "/" not in name:
            try:
                version = get_alias(store, model, name[: -len(".json")])
            except InvalidNameError:
                continue  # a stray object in the aliases folder, not ours
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
            manifest = read_manifest(store, name, version)
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
