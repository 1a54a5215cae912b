from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.schemas import PredictResponse
from finetune.errors import TooLarge
from finetune.ml.devices import usable_cores
from finetune.ml.predictor import ImageInput

router = APIRouter(tags=["predict"])
# Images are decoded off the event loop on these threads, handed over with asyncio's own executor hop:
# `run_in_threadpool` (anyio) cost ~0.3 ms more CPU per call on the 2-core bench machine, a sixth of
# the Python overhead /predict had over its forward pass.
TOP_K_MAX = 1000
DECODERS = ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="predict-decode")


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Top-k labels of one or more images",
    responses={
        400: {"description": "corrupt image"},
        404: {"description": "unknown model"},
        409: {"description": "model not ready"},
        413: {"description": "too many files"},
        415: {"description": "not an image"},
    },
)
async def predict(
    request: Request,
    file: Annotated[list[UploadFile], File(description="one or more images")],
    model_id: Annotated[
        str | None, Form(description="a model id or an alias; default: the alias `default`, else the newest model")
    ] = None,
    top_k: Annotated[int, Form(ge=1, le=TOP_K_MAX)] = 5,
    threshold: Annotated[
        float | None,
        Form(ge=0.0, le=1.0, description="abstain below this top-1 probability (overrides the model's thresholds)"),
    ] = None,
):
    images = [ImageInput(name=upload.filename or f"file{i}", data=await upload.read()) for i, upload in enumerate(file)]
    # Returned as a response: FastAPI would validate it against PredictResponse again (the documented
    # shape, which `Predictor.results` builds) before serializing it.
    return JSONResponse(await classify(request.app, images, model_id=model_id, top_k=top_k, threshold=threshold))


async def classify(app, images: list[ImageInput], *, model_id: str | None, top_k: int, threshold: float | None) -> dict:
    """The body of /predict, shared with `PredictFastPath`: `images` decoded off the event loop, classified
    by the model `model_id` names (None or "": the default) through its micro-batcher. Raises the domain
    errors of /predict (413 too many files, 404/409 model, 400/415 image)."""
    service, settings = app.state.service, app.state.settings
    if len(images) > settings.max_predict_files:
        raise TooLarge(f"{len(images)} files in one request; the limit is {settings.max_predict_files}")
    served = service.loaded_model(model_id or None) or await run_in_threadpool(
        service.model_for_prediction, model_id or None
    )
    predictor, batcher = served.predictor, served.batcher
    batcher.expect()  # a batch collecting now waits for these images while they decode
    try:

        def decode_all() -> np.ndarray:
            return np.stack([predictor.load_pixels(image, max_pixels=settings.max_image_pixels) for image in images])

        pixels = await asyncio.get_running_loop().run_in_executor(DECODERS, decode_all)
    except BaseException:
        batcher.unexpect()
        raise
    probabilities = await batcher.predict(pixels, expected=True)
    app.state.metrics.predictions.inc(len(images))
    names = [image.name for image in images]
    return {
        "model_id": predictor.model_id,
        "results": predictor.results(names, probabilities, top_k=top_k, threshold=threshold),
    }
