"""The REST contract's response shapes that are not stored records (those are finetune/stores/records.py):
lists, model summaries, predictions. Here, not in app/, so that the Python client (finetune/client.py)
parses answers with the very classes the API serializes them with, without importing the web app."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class ListPublic(BaseModel, Generic[T]):
    data: list[T]
    count: int


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


class Prediction(BaseModel):
    label: str
    probability: float


class ImagePredictions(BaseModel):
    filename: str
    label: str | None = Field(description="the top-1 class, or null when the model abstains (below its threshold)")
    abstained: bool
    predictions: list[Prediction] = Field(description="the top-k classes, most probable first")


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
                            "label": "cats",
                            "abstained": False,
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
