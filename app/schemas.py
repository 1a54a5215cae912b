"""Request and response schemas of the REST contract (DESIGN.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, model_validator

from finetune.ml.spec import JobSpec
from finetune.schemas import (  # noqa: F401 (the routers import them from here, with the rest of the contract)
    ImagePredictions,
    ListPublic,
    ModelSummary,
    Prediction,
    PredictResponse,
)
from finetune.stores.records import (
    AliasRecord,
    BatchRecord,
    DatasetRecord,
    ExportFormat,
    ExportRecord,
    JobRecord,
    ModelManifest,
)


class DatasetPublic(DatasetRecord):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3f2a9c1d4b5e6f70",
                    "name": "animals",
                    "classes": ["cats", "dogs"],
                    "counts": {"cats": 60, "dogs": 60},
                    "num_images": 120,
                    "skipped": [{"path": "cats/notes.txt", "reason": "not an image file (.txt)"}],
                    "created_at": "2026-11-28T10:00:00+00:00",
                }
            ]
        }
    )


class DatasetSamples(BaseModel):
    label: str
    files: list[str]


class JobCreate(JobSpec):
    """A job spec: every field optional but `dataset_id`; defaults are the seed's recipe."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "3f2a9c1d4b5e6f70",
                    "backbone": "mobilenet",
                    "alpha": 0.25,
                    "weights": "imagenet",
                    "image_size": 224,
                    "batch_size": 32,
                    "warmup": {"epochs": 5, "optimizer": "rmsprop", "learning_rate": 0.001},
                    "finetune": {
                        "epochs": 5,
                        "optimizer": "sgd",
                        "learning_rate": 0.001,
                        "unfreeze_from": "conv_dw_13",
                    },
                }
            ]
        },
    )


class JobPublic(JobRecord):
    """A job: its spec, where it stands, and its outcome."""


class AliasPublic(AliasRecord):
    """An alias: the model it points to now, and every model it pointed to before (oldest first)."""


class AliasSet(BaseModel):
    model_id: str = Field(min_length=1, max_length=128, description="a model id, or another alias's name")


class ThresholdsUpdate(BaseModel):
    """Either a target precision (each class gets the lowest threshold reaching it on the held-out split)
    or explicit per-class thresholds (null: that class never abstains)."""

    model_config = ConfigDict(extra="forbid")

    target_precision: float | None = Field(default=None, gt=0.0, le=1.0)
    values: dict[str, float | None] | None = Field(default=None, description="class -> threshold in [0, 1]")

    @model_validator(mode="after")
    def _exactly_one(self) -> ThresholdsUpdate:
        if (self.target_precision is None) == (self.values is None):
            raise ValueError("give exactly one of target_precision and values")
        if any(v is not None and not 0.0 <= v <= 1.0 for v in (self.values or {}).values()):
            raise ValueError("thresholds must be between 0 and 1")
        return self


class ClassThreshold(BaseModel):
    threshold: float | None
    precision: float | None = Field(description="held-out precision at the threshold (one class against the rest)")
    recall: float | None
    reason: str | None = None


class ThresholdsPublic(BaseModel):
    target_precision: float | None
    per_class: dict[str, ClassThreshold]


class EvaluationSample(BaseModel):
    file: str | None = Field(description="the image's path in the dataset")
    true: str
    predicted: str
    probability: float = Field(description="of the predicted class")
    probabilities: list[float] = Field(description="per class, in the model's class order")
    url: str | None = Field(description="the image, through GET /datasets/{id}/files/...")


class ModelPublic(ModelManifest):
    """The model's manifest."""


class BackbonePublic(BaseModel):
    name: str
    default_unfreeze_from: int | str
    min_image_size: int
    has_alpha: bool
    alphas: list[float]


class LayerPublic(BaseModel):
    index: int
    name: str
    type: str
    params: int
    trainable_weights: bool


class Message(BaseModel):
    detail: str


# --- exports (issue 13) ---------------------------------------------------------------------------


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"format": "onnx"}]})

    format: ExportFormat
    rebuild: bool = Field(
        default=False, description="build a succeeded export again (else 409); failed or cancelled ones always are"
    )


class ExportPublic(ExportRecord):
    """An export of a model: its build's status, its parity with the served model, where to download it."""


# --- batch predictions (issue 16) -----------------------------------------------------------------


class BatchOptions(BaseModel):
    """How a batch labels its images: the same model, `top_k` and `threshold` as /predict takes."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="a model id or an alias; default: the alias `default`, else the newest model",
    )
    top_k: int = Field(default=5, ge=1, le=1000)
    threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="abstain below this top-1 probability (overrides every class's)"
    )
    thresholds: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(
        default=None, description="per-class thresholds over the model's own (class -> threshold in [0, 1])"
    )
    chunk_size: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="images per results part (the unit of resume); default BATCH_CHUNK_SIZE",
    )
    webhook_url: AnyHttpUrl | None = Field(default=None, description="told when the batch ends (http or https)")

    def service_options(self) -> dict:
        """The options as `Service.create_batch` takes them."""
        options = self.model_dump(exclude={"webhook_url", "dataset_id", "source"})
        return options | {"webhook_url": str(self.webhook_url) if self.webhook_url else None}


class BatchCreate(BatchOptions):
    """A batch over a dataset (`dataset_id`) or an object-store prefix (`source`): exactly one of them.
    An archive of images is posted as multipart instead (`file`, with these options as form fields)."""

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={"examples": [{"source": "s3://photos/2026/", "model_id": "production", "top_k": 3}]},
    )

    dataset_id: str | None = Field(default=None, min_length=1, max_length=128)
    source: str | None = Field(
        default=None, pattern=r"^s3://[^/\s]+(/\S*)?$", max_length=2000, description="s3://bucket/prefix"
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> BatchCreate:
        if self.dataset_id is not None and self.source is not None:
            raise ValueError("give one source: dataset_id or source, not both")
        if self.dataset_id is None and self.source is None:
            raise ValueError("give a source: dataset_id, source, or an archive posted as multipart `file`")
        return self


class BatchPublic(BatchRecord):
    """A batch prediction: what it labels, with which model, where it stands."""
