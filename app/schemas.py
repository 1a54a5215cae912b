"""Request and response schemas of the REST contract (DESIGN.md)."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from finetune.ml.spec import JobSpec
from finetune.stores.records import DatasetRecord, ExportFormat, ExportRecord, JobRecord, ModelManifest

T = TypeVar("T")


class ListPublic(BaseModel, Generic[T]):
    data: list[T]
    count: int


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


class ModelSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    created_at: str
    job_id: str | None
    dataset_id: str | None
    classes: list[str]
    image_size: int
    backbone: str
    accuracy: float | None = None


class ModelPublic(ModelManifest):
    """The model's manifest."""


class Prediction(BaseModel):
    label: str
    probability: float


class ImagePredictions(BaseModel):
    filename: str
    predictions: list[Prediction]


class PredictResponse(BaseModel):
    model_id: str
    results: list[ImagePredictions]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_id": "8c1d2e3f4a5b6c7d",
                    "results": [
                        {
                            "filename": "cat.jpg",
                            "predictions": [
                                {"label": "cats", "probability": 0.97},
                                {"label": "dogs", "probability": 0.03},
                            ],
                        }
                    ],
                }
            ]
        }
    )


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
