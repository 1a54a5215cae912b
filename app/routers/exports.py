"""A model's exports (SavedModel, LiteRT, LiteRT int8, ONNX): requested here, built by a worker."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from app.deps import ServiceDep
from app.schemas import ExportCreate, ExportPublic, ListPublic
from finetune.ml.export import MEDIA_TYPES
from finetune.states import JobStatus
from finetune.stores.records import ExportFormat

FormatParam = Annotated[ExportFormat, Path(alias="format", description="savedmodel, litert, litert_int8 or onnx")]

router = APIRouter(prefix="/models/{model_id}/exports", tags=["exports"])


def _public(request: Request, record: dict) -> dict:
    if record["status"] != JobStatus.SUCCEEDED:
        return {**record, "download_url": None}
    url = request.url_for("download_export", model_id=record["model_id"], format=record["format"])
    return {**record, "download_url": url.path}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExportPublic,
    summary="Build an export of the model (queued for a worker)",
    responses={
        404: {"description": "unknown model"},
        409: {"description": "an export of this format is queued or running, or built (ask with rebuild)"},
        503: {"description": "the queue is unreachable"},
    },
)
async def create_export(model_id: str, body: ExportCreate, service: ServiceDep, request: Request, response: Response):
    record = await run_in_threadpool(service.create_export, model_id, body.format, rebuild=body.rebuild)
    response.headers["Location"] = request.url_for("get_export", model_id=model_id, format=body.format).path
    return _public(request, record)


@router.get("", response_model=ListPublic[ExportPublic])
async def list_exports(model_id: str, service: ServiceDep, request: Request):
    data = [_public(request, record) for record in await run_in_threadpool(service.exports.list, model_id)]
    return {"data": data, "count": len(data)}


@router.get("/{format}", response_model=ExportPublic, name="get_export")
async def get_export(model_id: str, fmt: FormatParam, service: ServiceDep, request: Request):
    return _public(request, await run_in_threadpool(service.exports.get, model_id, fmt))


@router.get(
    "/{format}/download",
    response_class=FileResponse,
    name="download_export",
    summary="The export's file (a SavedModel as a .tar.gz of its folder)",
    responses={
        200: {"content": {"application/octet-stream": {}, "application/gzip": {}}},
        409: {"description": "not built"},
    },
)
async def download_export(model_id: str, fmt: FormatParam, service: ServiceDep):
    path, record = await run_in_threadpool(service.exports.artifact_file, model_id, fmt)
    return FileResponse(path, media_type=MEDIA_TYPES[fmt], filename=f"{model_id}-{record['file']}")


@router.post(
    "/{format}/cancel",
    response_model=ExportPublic,
    summary="Cancel a queued export at once, a running one within a second",
    responses={409: {"description": "already final"}},
)
async def cancel_export(model_id: str, fmt: FormatParam, service: ServiceDep, request: Request):
    return _public(request, await run_in_threadpool(service.exports.request_cancel, model_id, fmt))
