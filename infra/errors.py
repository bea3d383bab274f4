"""The one error hierarchy of warmstart.

Every error that warmstart raises on purpose derives from :class:`WarmstartError`, in one
family per subsystem. Each message says what happened and what to do about it, naming the
offending key or value. Errors from botocore, redis and celery are converted at the single
module that wraps each of them, with ``raise ... from e``.

Errors travel to Celery clients as JSON: :meth:`WarmstartError.to_dict` gives the payload and
:func:`error_from_dict` turns it back into the typed error on the client side.
"""

from __future__ import annotations

from typing import Any


class WarmstartError(Exception):
    """Raised when warmstart refuses or fails an operation; the base of every family."""

    #: Short stable code, sent over the wire so that clients can re-raise the right type.
    code = "warmstart_error"

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "code": self.code, "message": str(self)}


# --- settings -----------------------------------------------------------------------------


class SettingsError(WarmstartError):
    """Raised when a WARMSTART_* setting is missing or malformed."""

    code = "settings"


class StateUnavailableError(WarmstartError):
    """Raised when Redis (broker, results and shared state) cannot be reached or fails."""

    code = "state_unavailable"


class ServiceError(WarmstartError):
    """Raised when a local service (the embedded redis-server or moto's S3, a child worker or
    beat process) cannot be started or does not answer."""

    code = "service"


# --- snapshots ----------------------------------------------------------------------------


class SnapshotError(WarmstartError):
    """Raised when a snapshot cannot be published, fetched or restored."""

    code = "snapshot"


class InvalidNameError(SnapshotError):
    """Raised when a model name or version does not match the safe name pattern."""

    code = "invalid_name"


class ManifestError(SnapshotError):
    """Raised when a manifest.json is malformed, incomplete or of an unknown format version."""

    code = "manifest"


class SafetensorsHeaderError(SnapshotError):
    """Raised when a safetensors file's header is malformed or disagrees with its manifest."""

    code = "safetensors_header"


class IntegrityError(SnapshotError):
    """Raised when bytes do not match their recorded size or sha256 (corrupt or truncated)."""

    code = "integrity"


class UnregisteredArchitectureError(SnapshotError):
    """Raised when a manifest names an architecture factory that is not on the allow-list."""

    code = "unregistered_architecture"


class VersionExistsError(SnapshotError):
    """Raised when publishing a version that already exists with different bytes."""

    code = "version_exists"


class SnapshotNotFoundError(SnapshotError):
    """Raised when a model, version or alias does not exist in the store."""

    code = "snapshot_not_found"


class StoreError(SnapshotError):
    """Raised when the snapshot store (S3 or a local directory) fails an operation."""

    code = "store"


class StoreUnreachableError(StoreError):
    """Raised when the snapshot store's endpoint cannot be reached."""

    code = "store_unreachable"


class ObjectTooLargeError(StoreError):
    """Raised when a store object is larger than the most bytes its reader accepts (a bound
    checked before the object is read)."""

    code = "object_too_large"


class UnsafeObjectError(StoreError):
    """Raised when a file store's object is a symbolic link, or not a regular file (a FIFO, a
    device), and so is refused instead of read."""

    code = "unsafe_object"


class CacheFullError(SnapshotError):
    """Raised when a snapshot does not fit the local cache's byte budget even after eviction."""

    code = "cache_full"


class HFFolderError(SnapshotError):
    """Raised when a Hugging Face folder cannot be published: no or a bad config.json, missing weights, an unknown class."""

    code = "hf_folder"


class CompileArtifactError(SnapshotError):
    """Raised when a compile artifact from the store is refused: unsigned, wrongly signed, for
    another model, version or platform, or too large. Compiled code is code: it is loaded only
    when signed with the key the workers hold (``WARMSTART_SIGNING_KEY``)."""

    code = "compile_artifact"


class RestoreError(SnapshotError):
    """Raised when a verified snapshot cannot be turned into a module (factory or state dict)."""

    code = "restore"


# --- workers ------------------------------------------------------------------------------


class WorkerError(WarmstartError):
    """Raised when a worker cannot hold, warm or serve a model."""

    code = "worker"


class UnknownModelError(WorkerError):
    """Raised when a request names a model that has no published snapshot."""

    code = "unknown_model"


class UnknownWorkerError(WorkerError):
    """Raised when a command names a worker that is not alive in the registry."""

    code = "unknown_worker"


class InvalidInputError(WorkerError):
    """Raised when inference inputs are malformed or disagree with the model's input spec."""

    code = "invalid_input"


class PayloadTooLargeError(InvalidInputError):
    """Raised when an inference payload exceeds the configured size limit."""

    code = "payload_too_large"


class NonFiniteOutputError(WorkerError):
    """Raised when a model produces NaN or infinite outputs."""

    code = "non_finite_output"


class ModelExecutionError(WorkerError):
    """Raised when the model's own forward raised on a request; the message carries the
    model's error."""

    code = "model_execution"


class ModelStateError(WorkerError):
    """Raised when a model is not in the state a step needs (another task demoted or reloaded
    it meanwhile); the step did nothing, and retrying it is safe."""

    code = "model_state"


class HealthCheckError(WorkerError):
    """Raised when a model fails its golden-output health check."""

    code = "health_check"


class BudgetError(WorkerError):
    """Raised when a model cannot fit a worker's memory budget even after eviction."""

    code = "budget"

    def __init__(self, message: str, *, busy: bool = False) -> None:
        super().__init__(message)
        #: The room exists but models in use or promotions in progress hold it: it may free
        #: up (False: the model is larger than the whole budget; waiting cannot help).
        self.busy = busy


class RequestCrashedWorkersError(WorkerError):
    """Raised when a request was delivered more than WARMSTART_MAX_DELIVERIES times because
    the workers running it died (a request that crashes whatever runs it)."""

    code = "request_crashed_workers"


class InferenceTimeoutError(WorkerError):
    """Raised on the client when an inference got no answer within its timeout."""

    code = "inference_timeout"


# --- scheduler ----------------------------------------------------------------------------


class SchedulerError(WarmstartError):
    """Raised when the scheduler, a policy or the simulator is given something it cannot use."""

    code = "scheduler"


class TraceFormatError(SchedulerError):
    """Raised when a trace file does not have the Azure Functions trace columns."""

    code = "trace_format"


class RolloutError(SchedulerError):
    """Raised when a version cannot be made ready, moved to, or rolled out; what serves is
    left as it was unless the message says otherwise."""

    code = "rollout"


def _all_error_types() -> dict[str, type[WarmstartError]]:
    found: dict[str, type[WarmstartError]] = {}
    stack: list[type[WarmstartError]] = [WarmstartError]
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    return found


def error_from_dict(payload: dict[str, Any]) -> WarmstartError:
    """Rebuild a typed error from :meth:`WarmstartError.to_dict` output (unknown types fall
    back to the base class, so a newer worker never breaks an older client)."""
    cls = _all_error_types().get(str(payload.get("type")), WarmstartError)
    return cls(str(payload.get("message", "")))
