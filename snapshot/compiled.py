"""Signed compile artifacts in the store: compiled code shared between hosts.

``torch.compile`` (inductor) generates code and caches it per host. A host that compiled a
model can save what it compiled (``torch.compiler.save_cache_artifacts``) and push it to the
store, so that other hosts of the same platform start from it instead of compiling again.

Compiled code is code, and loading it runs it (torch's cache format is pickle inside). So a
worker loads an artifact from the store only when it is signed with the key the workers hold
(``WARMSTART_SIGNING_KEY``, HMAC-SHA256), and checks the signature, the digest and the size
before a byte of it reaches torch. Without a key it never loads one; its own per-host cache,
which nobody else writes, is always used.

Keys (in the store)::

    compiled/<model>/<version>/<platform>.bin        the artifact bytes, as torch saved them
    compiled/<model>/<version>/<platform>.sig.json   {"alg", "model", "version", "platform",
                                                      "size_bytes", "sha256", "mac"}

``mac`` is HMAC-SHA256 over the other fields as canonical JSON (sorted keys, no spaces), so a
signature binds the artifact to its model, version and platform: an artifact copied under
another model's name, or another platform's, is refused. ``platform`` names what the code was
compiled for: torch and Python versions, CPU architecture and device kind.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import platform as _platform
import re
import sys

from warmstart.infra.errors import CompileArtifactError, ObjectTooLargeError, SnapshotNotFoundError
from warmstart.snapshot.jsonlimits import short
from warmstart.snapshot.names import validate_name
from warmstart.snapshot.stores.base import SnapshotStore

ALG = "HMAC-SHA256"
PREFIX = "compiled"
MAX_ARTIFACT_BYTES = 1024**3  #: far above a compiled model's cache (a tiny MLP's is 160 KB)
MAX_SIGNATURE_BYTES = 64 * 1024
_FIELDS = ("alg", "model", "version", "platform", "size_bytes", "sha256")


def platform_key(device: str = "cpu") -> str:
    """What compiled code is valid for, as a safe name: ``torch-2.13.0-py311-x86_64-cpu``."""
    import torch  # the running torch is part of the key

    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    raw = f"torch-{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-{_platform.machine()}-{kind}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)


def artifact_keys(model: str, version: str, platform: str) -> tuple[str, str]:
    """The store keys of one artifact and its signature."""
    validate_name(model)
    validate_name(version, "version")
    base = f"{PREFIX}/{model}/{version}/{platform}"
    return f"{base}.bin", f"{base}.sig.json"


def _mac(key: bytes, fields: dict[str, object]) -> str:
    message = json.dumps({k: fields[k] for k in _FIELDS}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def sign(key: bytes, model: str, version: str, platform: str, data: bytes) -> dict[str, object]:
    """The signature document of ``data`` (pure)."""
    fields: dict[str, object] = {
        "alg": ALG, "model": model, "version": version, "platform": platform,
        "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
    }  # fmt: skip
    return {**fields, "mac": _mac(key, fields)}


def verify(key: bytes, signature: object, model: str, version: str, platform: str, data: bytes,
           where: str = "the artifact") -> None:  # fmt: skip
    """Accept ``data`` only if ``signature`` signs exactly it, for this model, version and
    platform, with ``key`` (pure; constant-time comparison of the MAC).

    Raises:
        CompileArtifactError: naming what does not match, and the fix.
    """
    fix = "push it again with `warmstart compile-cache push` on a host that holds the workers' key"
    if not isinstance(signature, dict) or set(signature) != set(_FIELDS) | {"mac"}:
        raise CompileArtifactError(f"{where}: the signature is not a warmstart signature document; {fix}")
    if signature["alg"] != ALG:
        raise CompileArtifactError(f"{where}: signed with {short(signature['alg'])}, not {ALG}; {fix}")
    expected = {"model": model, "version": version, "platform": platform}
    for name, value in expected.items():
        if signature[name] != value:
            raise CompileArtifactError(f"{where}: signed for {name} {short(signature[name])}, not {value!r}; {fix}")
    mac = signature["mac"]
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(key, signature)):
        raise CompileArtifactError(
            f"{where}: the signature does not match the workers' key (WARMSTART_SIGNING_KEY): signed with "
            f"another key, or altered; {fix}"
        )
    # The MAC covers size and digest: now check that the bytes are the ones it signed.
    if signature["size_bytes"] != len(data) or signature["sha256"] != hashlib.sha256(data).hexdigest():
        raise CompileArtifactError(f"{where}: its bytes are not the ones signed (size or sha256 differ); {fix}")


def push_artifact(store: SnapshotStore, key: bytes, model: str, version: str, platform: str, data: bytes) -> str:
    """Sign and upload one artifact (the signature last, so a half-pushed one is unsigned).

    Returns:
        The artifact's store key.
    """
    if len(data) > MAX_ARTIFACT_BYTES:
        raise CompileArtifactError(f"a compile artifact of {len(data)} bytes is over the limit of {MAX_ARTIFACT_BYTES}")
    bin_key, sig_key = artifact_keys(model, version, platform)
    store.put_bytes(bin_key, data)
    store.put_bytes(sig_key, json.dumps(sign(key, model, version, platform, data), sort_keys=True).encode())
    return bin_key


def fetch_artifact(store: SnapshotStore, key: bytes, model: str, version: str, platform: str) -> bytes | None:
    """The signed artifact of ``model``/``version`` for ``platform``, checked; None when there
    is none. Sizes are checked before reading, the signature before the bytes are returned.

    Raises:
        CompileArtifactError: an artifact without a signature, with a bad one, or too large.
        StoreError: the store failed.
    """
    bin_key, sig_key = artifact_keys(model, version, platform)
    if not store.exists(bin_key):
        return None
    try:
        raw_signature = store.get_bytes(sig_key, max_bytes=MAX_SIGNATURE_BYTES)
    except SnapshotNotFoundError:
        raise CompileArtifactError(
            f"{bin_key} has no signature ({sig_key}): it was not pushed by `warmstart compile-cache push`, "
            "or the push did not finish; push it again"
        ) from None
    except ObjectTooLargeError as e:
        raise CompileArtifactError(f"{sig_key} is over {MAX_SIGNATURE_BYTES} bytes: not a signature") from e
    try:
        signature = json.loads(raw_signature)
    except ValueError:
        raise CompileArtifactError(f"{sig_key} is not JSON; push the artifact again") from None
    try:
        data = store.get_bytes(bin_key, max_bytes=MAX_ARTIFACT_BYTES)
    except ObjectTooLargeError as e:
        raise CompileArtifactError(f"{bin_key} is over the limit of {MAX_ARTIFACT_BYTES} bytes") from e
    verify(key, signature, model, version, platform, data, where=bin_key)
    return data


def has_artifact(store: SnapshotStore, model: str, version: str, platform: str) -> bool:
    return store.exists(artifact_keys(model, version, platform)[0])
