"""One settings object, read from the environment, shared by the API, the worker and the CLI."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from finetune.ml.devices import usable_cores


@dataclass(frozen=True)
class CacheLayout:
    """Every local cache path of a process, named once, under CACHE_DIR. Nothing here is the source
    of truth: each can be deleted while no job runs (the stores and Redis hold the state)."""

    root: Path

    @property
    def decoded_root(self) -> Path:
        return self.root / "decoded"

    def decoded(self, job_id: str) -> Path:
        """A job's decoded images (a memory-mapped array), removed when the job ends (or by the reaper
        once the job is final, when its process died first)."""
        return self.decoded_root / job_id

    @property
    def checkpoints_root(self) -> Path:
        return self.root / "checkpoints"

    def checkpoints(self, job_id: str) -> Path:
        """Where a job's process writes its per-epoch checkpoints when the checkpoint store is remote;
        each one is then copied to the store in the background (else they are written in the store)."""
        return self.checkpoints_root / job_id

    @property
    def uploads(self) -> Path:
        """The spool of uploads being received by the API."""
        return self.root / "uploads"

    @property
    def api_servers(self) -> Path:
        """What the processes of each `python -m app.server` share (Prometheus' files, the change count), a
        folder per server named by its pid: removed when it stops, or by the next server once it died."""
        return self.root / "api-servers"

    @property
    def logs(self) -> Path:
        """`make run`'s process logs."""
        return self.root / "logs"

    @property
    def stores(self) -> Path:
        """Staging folders and local copies of the model and dataset stores (each in a folder of its own)."""
        return self.root


WEBHOOK_SECRET_PREFIX = "whsec_"


class Settings(BaseSettings):
    # hide_input_in_errors: a malformed WEBHOOK_SECRET or API_KEYS must not be printed in the error
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True)

    redis_url: str | None = Field(default=None, description="Redis URL; unset for `make run` means an embedded Redis")
    model_dir: str = Field(default="./models", description="model store: a path or s3://bucket/prefix")
    data_dir: str = Field(default="./data", description="datasets: a path or s3://bucket/prefix")
    cache_dir: str = Field(default="./.cache/finetune", description="local cache for remote datasets")
    checkpoint_dir: str | None = Field(
        default=None,
        description="where per-epoch checkpoints live, readable by every worker: a path or s3://bucket/prefix "
        "(default: MODEL_DIR/.checkpoints)",
    )
    port: int = 8000

    max_upload_mb: float = Field(default=1024.0, description="largest request body accepted")
    max_predict_files: int = 32
    max_image_pixels: int = Field(default=50_000_000, description="decompression-bomb cap per image")
    archive_max_bytes: int = Field(default=8 * 1024**3, description="total unpacked bytes of one archive")
    archive_max_files: int = 200_000
    archive_max_ratio: float = Field(default=200.0, description="largest unpacked/packed ratio")

    job_time_limit_s: int = Field(default=48 * 3600, description="a job running longer ends failed")
    job_stale_after_s: int = Field(default=120, description="a running job silent this long is re-queued")
    job_max_attempts: int = 3
    heartbeat_s: float = 10.0
    gpu_lock_dir: str | None = Field(
        default=None, description="shared folder where each worker on a multi-GPU host claims one GPU"
    )
    leftover_grace_s: float = Field(
        default=3600.0,
        description="the reaper removes checkpoints and decoded-image caches of jobs that are final (or whose "
        "record is gone) once untouched this long",
    )
    stale_temp_after_s: float = Field(
        default=3600.0, description="at start-up the API removes upload spools and staging folders untouched this long"
    )

    model_cache_size: int = Field(default=4, description="models kept loaded by /predict")
    predict_max_batch: int = 32
    predict_max_wait_ms: float = 1.0
    api_workers: int = Field(
        default_factory=lambda: usable_cores(),
        ge=1,
        le=64,
        description="API processes (`python -m app.server`), each with its own models and micro-batcher "
        "(default: one per core)",
    )
    api_changes_file: str | None = Field(
        default=None,
        description="set by `python -m app.server` for its processes: the file through which a model deleted "
        "or an alias moved in one of them is seen by the others at once",
    )
    predict_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="forward passes of one model each API process runs at the same time "
        "(default: the cores shared out among API_WORKERS, at least 1)",
    )
    predict_threads: int = Field(
        default=1,
        ge=0,
        le=256,
        description="TensorFlow threads per forward pass in the API (0: TensorFlow's default, every core)",
    )

    batch_dir: str = Field(
        default="", description="batch inputs and results: a path or s3://bucket/prefix (empty: DATA_DIR/.batches)"
    )
    batch_chunk_size: int = Field(
        default=256, ge=1, le=10_000, description="images per results part of a batch (the unit of resume)"
    )
    batch_forward_size: int = Field(default=64, ge=1, le=1024, description="images per forward pass of a batch")
    batch_decode_threads: int = Field(
        default_factory=lambda: usable_cores(), ge=1, le=256, description="threads decoding a batch's images"
    )

    webhook_secret: SecretStr | None = Field(
        default=None,
        description="signs webhooks (Standard Webhooks): `whsec_` + base64 of 24-64 random bytes; unset: a job "
        "or batch with a webhook_url is refused (422)",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="let webhooks go to loopback, private, link-local and other non-public addresses "
        "(cloud metadata addresses stay refused)",
    )
    webhook_retry_for_s: float = Field(
        default=3600.0, ge=0.0, description="a message is retried for this long after its event, then given up"
    )
    webhook_backoff_s: float = Field(default=1.0, gt=0.0, description="the first retry's delay; each next one doubles")
    webhook_backoff_max_s: float = Field(default=300.0, gt=0.0, description="the longest delay between two attempts")
    webhook_timeout_s: float = Field(default=10.0, gt=0.0, description="one attempt's connect and response timeout")

    @field_validator("webhook_secret")
    @classmethod
    def _standard_webhooks_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is None or not secret.get_secret_value():
            return None
        encoded = secret.get_secret_value().removeprefix(WEBHOOK_SECRET_PREFIX)
        try:
            size = len(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            size = 0
        if not 24 <= size <= 64:
            raise ValueError(
                "WEBHOOK_SECRET must be `whsec_` followed by the base64 of 24 to 64 random bytes, e.g. "
                "python -c \"import base64, os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\""
            )
        return secret

    api_keys: str = Field(default="", description="comma-separated; empty means no authentication")
    cors_origins: str = Field(default="", description="comma-separated origins; empty means CORS off")

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def batch_store_url(self) -> str:
        """Where batches live: BATCH_DIR, else a hidden folder of the dataset store (never listed as a dataset)."""
        return self.batch_dir or f"{self.data_dir.rstrip('/')}/.batches"

    @property
    def cache(self) -> CacheLayout:
        return CacheLayout(Path(self.cache_dir).resolve())

    @model_validator(mode="after")
    def _checkpoints_in_a_folder_of_their_own(self) -> Settings:
        """The reaper deletes what it finds in CHECKPOINT_DIR for jobs that are over: never a store's folder."""
        if self.checkpoint_dir is not None:
            normalized = self.checkpoint_dir.rstrip("/")
            if normalized in (self.model_dir.rstrip("/"), self.data_dir.rstrip("/")):
                raise ValueError("CHECKPOINT_DIR must be a folder of its own, not MODEL_DIR or DATA_DIR")
        return self

    @model_validator(mode="after")
    def _cores_shared_among_api_workers(self) -> Settings:
        if self.predict_concurrency is None:
            self.predict_concurrency = max(1, usable_cores() // self.api_workers)
        return self

    @property
    def checkpoint_url(self) -> str:
        return self.checkpoint_dir or f"{self.model_dir.rstrip('/')}/.checkpoints"

    @property
    def visibility_timeout_s(self) -> int:
        """Longer than the longest job allowed, so Redis never re-delivers a running job."""
        return self.job_time_limit_s + 3600


@lru_cache
def get_settings() -> Settings:
    return Settings()
