from __future__ import annotations

import functools
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from app.deps import ServiceDep, SettingsDep
from app.schemas import (
    EvaluationSample,
    ListPublic,
    ModelPublic,
    ModelSummary,
    ThresholdsPublic,
    ThresholdsUpdate,
)
from finetune.ml.predictor import ImageInput

router = APIRouter(prefix="/models", tags=["models"])


def _summary(manifest: dict) -> dict:
    keep = ("id", "created_at", "job_id", "dataset_id", "classes", "image_size", "backbone", "alpha", "timings")
    return {key: manifest.get(key) for key in keep} | {"accuracy": (manifest.get("metrics") or {}).get("accuracy")}


@router.get("", response_model=ListPublic[ModelSummary])
async def list_models(service: ServiceDep):
    data = [_summary(manifest) for manifest in await run_in_threadpool(service.models.list)]
    return {"data": data, "count": len(data)}


@router.get("/{model_id}", response_model=ModelPublic)
async def get_model(model_id: str, service: ServiceDep):
    return await run_in_threadpool(service.models.get, model_id)


@router.get(
    "/{model_id}/download", response_class=FileResponse, responses={200: {"content": {"application/octet-stream": {}}}}
)
async def download_model(model_id: str, service: ServiceDep):
    path = await run_in_threadpool(service.models.model_file, model_id)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{model_id}.keras")


@router.put(
    "/{model_id}/thresholds",
    response_model=ThresholdsPublic,
    summary="Per-class thresholds below which /predict abstains",
    responses={404: {"description": "unknown model, or none of its held-out predictions"}},
)
async def set_thresholds(model_id: str, body: ThresholdsUpdate, service: ServiceDep):
    return await run_in_threadpool(
        functools.partial(service.set_thresholds, model_id, target_precision=body.target_precision, values=body.values)
    )


@router.get(
    "/{model_id}/evaluation/samples",
    response_model=ListPublic[EvaluationSample],
    summary="The held-out images behind a confusion-matrix cell, most confident first",
)
async def evaluation_samples(
    model_id: str,
    service: ServiceDep,
    true: Annotated[str | None, Query(description="the true class")] = None,
    predicted: Annotated[str | None, Query(description="the predicted class")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
):
    data, count = await run_in_threadpool(
        functools.partial(
            service.evaluation_samples, model_id, true=true, predicted=predicted, limit=limit, offset=offset
        )
    )
    return {"data": data, "count": count}


@router.post(
    "/{model_id}/explain",
    response_class=Response,
    summary="Where the model looked: a Grad-CAM heatmap over the image, as PNG",
    responses={
        200: {"content": {"image/png": {}}, "description": "headers X-Class and X-Probability name what is shown"},
        404: {"description": "unknown model"},
        415: {"description": "not an image"},
        422: {"description": "unknown class"},
    },
)
async def explain(
    model_id: str,
    service: ServiceDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="one image")],
    class_name: Annotated[str | None, Form(alias="class", description="default: the top class")] = None,
):
    image = ImageInput(name=file.filename or "image", data=await file.read())
    png, explained, probability = await run_in_threadpool(
        functools.partial(service.explain, model_id, image, class_name=class_name, max_pixels=settings.max_image_pixels)
    )
    headers = {"X-Class": quote(explained), "X-Probability": f"{probability:.6f}"}
    return Response(png, media_type="image/png", headers=headers)


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "unknown model"}, 409: {"description": "aliases point to it"}},
)
async def delete_model(
    model_id: str,
    service: ServiceDep,
    force: Annotated[bool, Query(description="also delete the aliases that point to it")] = False,
):
    await run_in_threadpool(functools.partial(service.delete_model, model_id, force=force))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
