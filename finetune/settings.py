"""One settings object, read from the environment, shared by the API, the worker and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from finetune.ml.devices import usable_cores


@dataclass(frozen=True)
class CacheLayout:
    """Every local cache path of a process, named once, under CACHE_DIR. Nothing here is the source
    of truth: each can be deleted while no job runs (the stores and Redis hold the state)."""

    root: Path

    def decoded(self, job_id: str) -> Path:
        """A job's decoded images (a memory-mapped array), removed when the job ends."""
        return self.root / "decoded" / job_id

    def checkpoints(self, job_id: str) -> Path:
        """A job's per-epoch checkpoints when the model store is remote (else they sit beside the models)."""
        return self.root / "checkpoints" / job_id

    @property
    def uploads(self) -> Path:
        """The spool of uploads being received by the API."""
        return self.root / "uploads"

    @property
    def logs(self) -> Path:
        """`make run`'s process logs."""
        return self.root / "logs"

    @property
    def stores(self) -> Path:
        """Staging folders and local copies of the model and dataset stores (each in a folder of its own)."""
        return self.root


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    redis_url: str | None = Field(default=None, description="Redis URL; unset for `make run` means an embedded Redis")
    model_dir: str = Field(default="./models", description="model store: a path or s3://bucket/prefix")
    data_dir: str = Field(default="./data", description="datasets: a path or s3://bucket/prefix")
    cache_dir: str = Field(default="./.cache/finetune", description="local cache for remote datasets")
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
    stale_temp_after_s: float = Field(
        default=3600.0, description="at start-up the API removes upload spools and staging folders untouched this long"
    )

    model_cache_size: int = Field(default=4, description="models kept loaded by /predict")
    predict_max_batch: int = 32
    predict_max_wait_ms: float = 1.0
    predict_concurrency: int = Field(
        default_factory=lambda: usable_cores(),
        ge=1,
        le=256,
        description="forward passes of one model /predict runs at the same time (default: one per core)",
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

    @property
    def visibility_timeout_s(self) -> int:
        """Longer than the longest job allowed, so Redis never re-delivers a running job."""
        return self.job_time_limit_s + 3600


@lru_cache
def get_settings() -> Settings:
    return Settings()
