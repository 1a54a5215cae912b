"""The records the stores keep, each shape defined once: a job (Redis), a dataset (`dataset.json`),
a model (`manifest.json`). The stores build them through these classes, so a record can't be
written with a field missing or misspelled; the API's `*Public` schemas are these same classes
(app/schemas.py), so the REST contract and the stored shape can't drift apart.

The stores hand records on as the JSON-shaped mappings they store (`to_json`): the runner patches
job records field by field in Redis, and a manifest carries open-ended sections (exports, thresholds)
that newer versions add."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from finetune.ids import new_id, now_iso
from finetune.ml.export import FORMATS
from finetune.states import JobStatus, Phase


class Record(BaseModel):
    """A stored record."""

    def to_json(self) -> dict:
        """The record as stored: plain JSON types (statuses as their strings)."""
        return self.model_dump(mode="json")


class SkippedFile(BaseModel):
    path: str
    reason: str


class JobError(BaseModel):
    type: str
    message: str


class Publication(BaseModel):
    """What a job's `publish` did: the alias moved to its model, or why not."""

    alias: str
    published: bool
    reason: str | None = None
    accuracy: float | None = None
    min_accuracy: float
    split: str = Field(default="validation", description="the split the accuracy was measured on")


class JobRecord(Record):
    """A job as Redis keeps it and `GET /jobs/{id}` shows it."""

    id: str
    status: JobStatus
    spec: dict[str, Any]
    dataset_id: str
    phase: Phase | None = None
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    progress: float = Field(default=0.0, description="0..1 over both phases")
    metrics: dict[str, Any] | None = Field(default=None, description="the latest epoch's metrics")
    history: list[dict[str, Any]] = Field(default_factory=list)
    eta_seconds: float | None = None
    model_id: str | None = None
    error: JobError | None = None
    publication: Publication | None = Field(default=None, description="what the spec's `publish` did")
    attempts: int = 0
    worker: str | None = Field(default=None, description="host:pid of the job process running it")
    heartbeat_at: float | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def new(cls, spec: dict[str, Any], dataset_id: str) -> JobRecord:
        return cls(id=new_id(), status=JobStatus.QUEUED, spec=spec, dataset_id=dataset_id, created_at=now_iso())


class DatasetRecord(Record):
    """An uploaded dataset (`dataset.json`)."""

    id: str
    name: str
    classes: list[str]
    counts: dict[str, int]
    num_images: int
    skipped: list[SkippedFile]
    created_at: str


class ModelManifest(Record):
    """A saved model's record (`manifest.json`). Open: sections added later (exports, aliases' history)
    are kept as they are."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: str
    created_at: str
    job_id: str | None
    dataset_id: str | None
    spec: dict[str, Any]
    classes: list[str]
    image_size: int
    backbone: str
    alpha: float | None = None
    metrics: dict[str, Any]
    warmup_metrics: dict[str, Any] | None
    history: list[dict[str, Any]]
    timings: dict[str, Any]
    num_train: int = 0
    num_validation: int = 0
    skipped: list[SkippedFile] = Field(default_factory=list)
    model_file: str = "model.keras"
    versions: dict[str, str] = Field(default_factory=dict)
    curves: dict[str, Any] | None = Field(
        default=None, description="held-out PR curves, AP and ROC AUC per class, macro mAP, calibration (ECE)"
    )
    thresholds: dict[str, Any] | None = Field(
        default=None, description="{target_precision, per_class: {class: {threshold, precision, recall}}}"
    )
    predictions_file: str | None = Field(default=None, description="every held-out image's label and probabilities")


class AliasChange(BaseModel):
    """One period of an alias: the model it pointed to, from when, until when (None: still)."""

    model_config = ConfigDict(populate_by_name=True)

    model_id: str
    from_: str = Field(alias="from")
    to: str | None = None


class AliasRecord(Record):
    """An alias as stored and as `GET /aliases/{name}` shows it; `history` is oldest first."""

    name: str
    model_id: str
    updated_at: str
    history: list[AliasChange]

    def to_json(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)

    def moved_to(self, model_id: str) -> AliasRecord:
        now = now_iso()
        history = [*self.history[:-1], self.history[-1].model_copy(update={"to": now})] if self.history else []
        history.append(AliasChange(model_id=model_id, from_=now))
        return AliasRecord(name=self.name, model_id=model_id, updated_at=now, history=history)

    @property
    def previous_model_id(self) -> str | None:
        """The model this alias pointed to before its current one."""
        return self.history[-2].model_id if len(self.history) >= 2 else None


# --- exports (issue 13): `<model>/exports/<format>/export.json` ------------------------------------

ExportFormat = Literal[FORMATS]  # type: ignore[valid-type]


class ExportParity(BaseModel):
    """The export against the served Keras model on the model's held-out images (`available: false`
    with the reason when they cannot be had, e.g. the dataset was deleted)."""

    model_config = ConfigDict(extra="allow")

    available: bool
    reason: str | None = None
    images: int = 0
    agreement: float | None = Field(default=None, description="top-1 agreement with the served model, 0..1")
    max_abs_diff: float | None = Field(default=None, description="largest absolute probability difference")
    accuracy: float | None = Field(default=None, description="the export's own accuracy on the held-out images")
    keras_accuracy: float | None = Field(default=None, description="the served model's, on the same images")
    latency_ms: float | None = Field(default=None, description="median single-image latency on the worker")
    keras_latency_ms: float | None = None


class ExportRecord(Record):
    """One export of a model, as the worker builds it and `GET /models/{id}/exports/{format}` shows it."""

    id: str = Field(description="this build (a rebuild gets a new one)")
    model_id: str
    format: ExportFormat
    status: JobStatus
    error: JobError | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    worker: str | None = None
    file: str | None = Field(default=None, description="the download's file name")
    size_bytes: int | None = Field(default=None, description="the download's size")
    unpacked_bytes: int | None = Field(default=None, description="a SavedModel folder's size on disk")
    build_seconds: float | None = None
    input: dict[str, Any] | None = Field(default=None, description="what the export takes")
    parity: ExportParity | None = None
    flagged: bool = Field(default=False, description="parity below the format's bar (float 0.999, int8 0.98)")
    flag_reason: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    download_url: str | None = Field(default=None, description="set by the API once succeeded")

    @classmethod
    def new(cls, model_id: str, fmt: str) -> ExportRecord:
        return cls(id=new_id(), model_id=model_id, format=fmt, status=JobStatus.QUEUED, created_at=now_iso())


# --- batch predictions (issue 16) -------------------------------------------------------------------

BatchSourceKind = Literal["archive", "dataset", "url"]


class BatchSource(BaseModel):
    """What a batch labels: an uploaded archive (`name`: its file name), a dataset, or an object-store URL."""

    kind: BatchSourceKind
    dataset_id: str | None = None
    url: str | None = None
    name: str | None = None


class BatchCounts(BaseModel):
    total: int = Field(description="images (files) in the batch")
    done: int = Field(default=0, description="images with a results row, labelled or not")
    errors: int = Field(default=0, description="rows carrying the error their image got")
    chunks: int = Field(description="results parts in all")
    chunks_done: int = 0


class BatchRecord(Record):
    """A batch prediction as Redis keeps it and `GET /batches/{id}` shows it."""

    id: str
    status: JobStatus
    model_id: str = Field(description="the concrete model, resolved from the id or alias asked for")
    model_ref: str | None = Field(default=None, description="the id or alias asked for (None: the default)")
    source: BatchSource
    top_k: int
    threshold: float | None = None
    thresholds: dict[str, float] | None = Field(default=None, description="per-class, over the model's own")
    chunk_size: int
    counts: BatchCounts
    progress: float = Field(default=0.0, description="0..1: images done over images in all")
    eta_seconds: float | None = None
    images_per_second: float | None = Field(default=None, description="measured in the current or last attempt")
    webhook_url: str | None = None
    error: JobError | None = None
    attempts: int = 0
    worker: str | None = Field(default=None, description="host:pid of the process running it")
    resumed_at_chunk: int | None = Field(default=None, description="the first chunk the latest attempt ran")
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
