from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from app.deps import ServiceDep, SettingsDep
from app.schemas import DatasetPublic, DatasetSamples, ListPublic
from app.uploads import spool_to_disk

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    summary="Upload a .zip, .tar or .tar.gz of <class>/<image> folders",
)
async def create_dataset(
    service: ServiceDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="the archive")],
    name: Annotated[str | None, Form(max_length=200)] = None,
):
    spool_dir = settings.cache.uploads
    archive = await run_in_threadpool(spool_to_disk, file, spool_dir, int(settings.max_upload_mb * 1024 * 1024))
    try:
        return await run_in_threadpool(
            service.datasets.create_from_archive,
            archive,
            name=name or Path(file.filename or "dataset").name.split(".")[0],
        )
    finally:
        archive.unlink(missing_ok=True)


@router.get("", response_model=ListPublic[DatasetPublic])
async def list_datasets(service: ServiceDep):
    data = await run_in_threadpool(service.datasets.list)
    return {"data": data, "count": len(data)}


@router.get("/{dataset_id}", response_model=DatasetPublic)
async def get_dataset(dataset_id: str, service: ServiceDep):
    return await run_in_threadpool(service.datasets.get, dataset_id)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_dataset(dataset_id: str, service: ServiceDep):
    await run_in_threadpool(service.delete_dataset, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{dataset_id}/samples",
    response_model=ListPublic[DatasetSamples],
    summary="A few image paths per class, for thumbnails",
)
async def dataset_samples(dataset_id: str, service: ServiceDep, per_class: Annotated[int, Query(ge=1, le=50)] = 4):
    data = await run_in_threadpool(service.datasets.samples, dataset_id, per_class=per_class)
    return {"data": data, "count": len(data)}


@router.get("/{dataset_id}/files/{path:path}", response_class=Response, responses={200: {"content": {"image/*": {}}}})
async def dataset_file(dataset_id: str, path: str, service: ServiceDep):
    data = await run_in_threadpool(service.datasets.read_file, dataset_id, path)
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if not media_type.startswith("image/"):
        media_type = "application/octet-stream"
    return Response(
        data,
        media_type=media_type,
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
