from __future__ import annotations

import functools
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from app.deps import ServiceDep
from app.schemas import ListPublic, ModelPublic, ModelSummary

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
