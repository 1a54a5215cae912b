"""Request and response schemas of the REST contract (DESIGN.md)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from finetune.ml.spec import JobSpec
from finetune.schemas import (  # noqa: F401 (the routers import them from here, with the rest of the contract)
    ImagePredictions,
    ListPublic,
    ModelSummary,
    Prediction,
    PredictResponse,
)
from finetune.stores.records import AliasRecord, DatasetRecord, ExportFormat, ExportRecord, JobRecord, ModelManifest


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

    children: list[str] = Field(default_factory=list, description="the versions made from this dataset, oldest first")


class DatasetMove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(max_length=4096, description="a file of the dataset, as `GET /datasets/{id}/files/` takes it")
    to: str = Field(max_length=255, description="the class folder it goes to (of the same split)")


class DatasetVersionEdits(BaseModel):
    """A version made by relabelling and removing files of its parent (JSON; an archive adds images instead)."""

    model_config = ConfigDict(extra="forbid")

    move: list[DatasetMove] = Field(default_factory=list, max_length=100_000)
    remove: list[str] = Field(default_factory=list, max_length=100_000)
    name: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _changes_something(self) -> DatasetVersionEdits:
        if not self.move and not self.remove:
            raise ValueError("a version needs at least one file to move or remove")
        return self


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
