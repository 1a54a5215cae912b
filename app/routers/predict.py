from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from prometheus_client import Histogram

from app.deps import ServiceDep, SettingsDep
from app.schemas import PredictResponse
from finetune.batching import MicroBatcher
from finetune.errors import TooLarge
from finetune.predictor import ImageInput

router = APIRouter(tags=["predict"])


def _batch_sizes(request: Request) -> Histogram:
    """Images per forward pass of the micro-batchers, in the app's own metrics registry."""
    state = request.app.state
    histogram = getattr(state, "predict_batch_images", None)
    if histogram is None:
        histogram = state.predict_batch_images = Histogram(
            "finetune_predict_batch_images", "Images per forward pass of /predict's micro-batcher",
            registry=state.metrics.registry, buckets=(1, 2, 4, 8, 16, 32, 64))
    return histogram


def _batcher(request: Request, predictor, settings) -> MicroBatcher:
    """One micro-batcher per loaded predictor, living and dying with it."""
    batcher = getattr(predictor, "batcher", None)
    if batcher is None:
        sizes = _batch_sizes(request)
        batcher = predictor.batcher = MicroBatcher(
            predictor, max_batch=settings.predict_max_batch, max_wait_s=settings.predict_max_wait_ms / 1000,
            concurrency=settings.predict_concurrency, on_batch=lambda images, seconds: sizes.observe(images))
    return batcher


@router.post("/predict", response_model=PredictResponse,
             summary="Top-k labels of one or more images",
             responses={400: {"description": "corrupt image"}, 404: {"description": "unknown model"},
                        409: {"description": "model not ready"}, 413: {"description": "too many files"},
                        415: {"description": "not an image"}})
async def predict(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    file: Annotated[list[UploadFile], File(description="one or more images")],
    model_id: Annotated[str | None, Form(description="default: the newest model")] = None,
    top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
):
    if len(file) > settings.max_predict_files:
        raise TooLarge(f"{len(file)} files in one request; the limit is {settings.max_predict_files}")
    predictor = (service.loaded_model(model_id or None)
                 or await run_in_threadpool(service.model_for_prediction, model_id or None))
    batcher = _batcher(request, predictor, settings)
    batcher.expect()  # a batch collecting now waits for these images while they decode
    try:
        images = [ImageInput(name=upload.filename or f"file{i}", data=await upload.read())
                  for i, upload in enumerate(file)]

        def decode_all() -> np.ndarray:
            return np.stack([predictor.load_pixels(image, max_pixels=settings.max_image_pixels) for image in images])

        pixels = await run_in_threadpool(decode_all)
    except BaseException:
        batcher.unexpect()
        raise
    probabilities = await batcher.predict(pixels, expected=True)
    request.app.state.metrics.predictions.inc(len(images))
    return {
        "model_id": predictor.model_id,
        "results": [
            {"filename": image.name, "predictions": predictions}
            for image, predictions in zip(images, predictor.top_k(probabilities, top_k))
        ],
    }
