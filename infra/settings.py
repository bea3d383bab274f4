"""Typed settings, read once from ``WARMSTART_*`` environment variables at the entry point.

Nothing reads ``os.environ`` at import time: the CLI, the Celery app and the tests build a
:class:`Settings` once and pass it down. Units are part of the names (``_bytes``, ``_s``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from warmstart.infra.errors import SettingsError

GiB = 1024**3
MiB = 1024**2


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """All of warmstart's configuration. Each field is ``WARMSTART_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="WARMSTART_", extra="ignore", frozen=True)

    # --- services -------------------------------------------------------------------------
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Broker, result backend and state.")
    store_url: str = Field(
        "file://./.warmstart/store",
        description="Where snapshots live: s3://bucket/prefix or file:///absolute/path.",
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (moto, MinIO); None for AWS.")
    s3_region: str = "us-east-1"

    # --- local cache and budgets ----------------------------------------------------------
    cache_dir: Path = Field(Path(".warmstart/cache"), description="Local snapshot cache (DISK tier).")
    cache_budget_bytes: int = Field(20 * GiB, gt=0)
    host_budget_bytes: int = Field(8 * GiB, gt=0, description="Mapped, resident models (HOST tier).")
    device_budget_bytes: int = Field(8 * GiB, gt=0, description="Models on the device (DEVICE/HOT).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Intra-op threads for inference (0: torch's default, one per core). On a host shared with
    # other processes, fewer threads avoid stalls when a core is taken away.
    torch_threads: int = Field(0, ge=0, le=256)
    fetch_concurrency: int = Field(8, ge=1, le=64)
    fetch_part_bytes: int = Field(16 * MiB, ge=1 * MiB)

    # --- compiled models (docs/compile.md) -------------------------------------------------
    # The HMAC-SHA256 key that signs compile artifacts in the store. Without it a worker never
    # loads compiled code from the store (its per-host compile cache is always used).
    signing_key: SecretStr | None = Field(None, description="Signs and checks compile artifacts (>= 16 characters).")
    # The first forward of a model published with `compile` compiles it: allowed this long.
    compile_timeout_s: float = Field(600.0, gt=0)

    # --- architectures a manifest may name (on top of the entry-point group) --------------
    allowed_architectures: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- workers --------------------------------------------------------------------------
    profile: Literal["dev", "prod"] = "dev"
    worker_name: str | None = None
    eager_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_payload_bytes: int = Field(8 * MiB, gt=0)
    # The largest message on the broker (a request as Redis stores it, ~16/9 of its tensor
    # bytes): the embedded redis-server's proto-max-bulk-len, the workers' limit before
    # decoding a message, the client's before sending one. Redis accepts no less than 1 MiB.
    max_message_bytes: int = Field(32 * MiB, ge=1 * MiB)
    # Answers not read (and so not deleted) by a client expire from Redis after this long.
    result_ttl_s: int = Field(300, ge=1)
    health_interval_s: float = Field(10.0, gt=0)
    heartbeat_interval_s: float = Field(2.0, gt=0)
    heartbeat_ttl_s: float = Field(10.0, gt=0)
    warmup_max_runs: int = Field(20, ge=1)
    warmup_max_s: float = Field(10.0, gt=0)
    health_timeout_s: float = Field(30.0, gt=0)
    inference_timeout_s: float = Field(60.0, gt=0)
    worker_concurrency: int = Field(4, ge=1, le=64)
    # Dynamic batching: override every manifest's max_batch when > 0 (1 turns batching off),
    # and its max_wait_ms when set.
    max_batch: int = Field(0, ge=0, le=4096)
    max_wait_ms: float | None = Field(None, ge=0, le=1000)
    # An unacknowledged inference is handed to another worker after this long: it bounds how
    # late a request whose worker was killed is answered, and must exceed the slowest inference.
    visibility_timeout_s: float = Field(300.0, gt=0)
    prewarm_claim_s: float = Field(30.0, gt=0)
    # A request whose worker died is delivered again; one that kills every worker that runs
    # it would otherwise take the fleet down in turn. After this many deliveries it is
    # answered with RequestCrashedWorkersError instead of run.
    max_deliveries: int = Field(3, ge=1)
    # A promotion whose room is held by models in use (or by other promotions) waits this
    # long for them to finish before it is answered with BudgetError (0: answer at once).
    room_wait_s: float = Field(10.0, ge=0, le=600)
    # A request unanswered this long is looked for; one the broker lost (in no queue, not
    # running, not answered) is sent again by the client (workers/delivery.py).
    request_check_s: float = Field(5.0, gt=0)
    # Cached snapshots are re-hashed in the background, this many bytes every interval (0
    # turns it off), so a file changed on disk is found without disturbing serving.
    verify_interval_s: float = Field(60.0, ge=0)
    verify_bytes_per_interval: int = Field(256 * MiB, gt=0)

    # --- scheduler ------------------------------------------------------------------------
    plan_interval_s: float = Field(5.0, gt=0)
    # How long a worker that starts while a beat plans waits for the planner's assignment
    # before it warms its own eager models instead (workers/joining.py). None: two plan
    # intervals and a second; 0: never wait.
    join_wait_s: float | None = Field(None, ge=0, le=600)
    # On SIGTERM a worker first hands its HOT models over (workers/handover.py) for at most
    # this long, serving all the while, then stops taking requests and finishes what it runs.
    # 0: stop at once. Keep it under the orchestrator's grace period (Kubernetes: 30 s default).
    drain_grace_s: float = Field(20.0, ge=0, le=3600)
    # Without Redis keyspace notifications the beat polls the queue lengths this often.
    queue_poll_s: float = Field(0.2, gt=0)
    # The time unit of traffic recording and of the policies: one "minute" of the model.
    # 60 in production; the demo compresses a day by making it a few seconds.
    traffic_minute_s: float = Field(60.0, gt=0)
    beat_catchup_min: int = Field(1440, ge=1)
    keep_warm_interval_s: float = Field(60.0, gt=0)
    # How long the beat trusts its catalog of published models (names and sizes) before it
    # reads the store again; while the store is unreachable it goes on with the last one.
    catalog_ttl_s: float = Field(30.0, ge=0)
    policy: str = "warmstart"
    traffic_retention_min: int = Field(7 * 24 * 60, ge=60)
    gpu_gb_hour_price: float = Field(2.50, ge=0)
    host_gb_hour_price: float = Field(0.005, ge=0)

    # --- observability and scaling (docs/deploy.md) ---------------------------------------
    # /metrics, /healthz and /readyz of a worker or a beat; 0 serves none (one port per
    # process: several on one host need distinct ports). 0.0.0.0 in a container.
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # Celery task events (task-sent/-received/-succeeded…) for the Celery Prometheus exporter.
    celery_task_events: bool = False
    # The floor and ceiling of desired_workers (the beat's scaling signal).
    scale_min_workers: int = Field(1, ge=0)
    scale_max_workers: int = Field(10, ge=1)
    # Whether the beat empties the workers its signal would remove (places nothing on them,
    # so a scaler can stop them without a cold start). Off by default: a fixed fleet, or one
    # whose scaler removes workers through a draining preStop (Kubernetes), keeps every worker
    # in use. `warmstart autoscale` needs it on in the beat it follows.
    scale_drain: bool = False
    # Seconds a new worker takes to start before warming models (the lead time adds the
    # measured seconds to get the models HOT), and how busy the signal plans workers to be.
    scale_worker_start_s: float = Field(20.0, ge=0)
    scale_target_utilization: float = Field(0.7, gt=0, le=1)

    _split_lists = field_validator("allowed_architectures", "eager_models", mode="before")(
        _split_csv
    )

    @model_validator(mode="after")
    def _check_scale_bounds(self) -> "Settings":
        if self.scale_min_workers > self.scale_max_workers:
            raise ValueError(
                f"the scaling floor WARMSTART_SCALE_MIN_WORKERS={self.scale_min_workers} is above the ceiling "
                f"WARMSTART_SCALE_MAX_WORKERS={self.scale_max_workers}: lower the floor or raise the ceiling"
            )
        return self

    @field_validator("signing_key")
    @classmethod
    def _check_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("WARMSTART_SIGNING_KEY must have at least 16 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("store_url")
    @classmethod
    def _check_store_url(cls, value: str) -> str:
        scheme = urlparse(value).scheme
        if scheme not in ("s3", "file"):
            raise ValueError(
                f"store_url {value!r} must start with s3://bucket/prefix or file:///path"
            )
        if scheme == "s3" and not urlparse(value).netloc:
            raise ValueError(f"store_url {value!r} names no bucket: use s3://bucket/prefix")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if urlparse(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"redis_url {value!r} must start with redis://, rediss:// or unix://")
        return value


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides.

    Raises:
        SettingsError: a variable is malformed; the message names the variable and the fix.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        problems = "; ".join(
            (f"WARMSTART_{'_'.join(str(p) for p in err['loc']).upper()}: " if err["loc"] else "") + err["msg"]
            for err in e.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from e
