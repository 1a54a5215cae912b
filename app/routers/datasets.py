from __future__ import annotations

import mimetypes
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile as StarletteUpload

from app.deps import ServiceDep, SettingsDep
from app.schemas import DatasetPublic, DatasetSamples, DatasetVersionEdits, ListPublic
from finetune.errors import NotAnImage, TooLarge
from finetune.stores.versions import Move, VersionEdits

router = APIRouter(prefix="/datasets", tags=["datasets"])
CHUNK = 1024 * 1024


def _spool_to_disk(upload: UploadFile, directory: Path, max_bytes: int) -> Path:
    """Copies the upload in chunks to a file of our own, refusing past `max_bytes`."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(prefix=".upload-", dir=directory, delete=False)
    written = 0
    with handle:
        while chunk := upload.file.read(CHUNK):
            written += len(chunk)
            if written > max_bytes:
                handle.close()
                Path(handle.name).unlink(missing_ok=True)
                raise TooLarge(f"upload larger than {max_bytes / (1024 * 1024):g} MB")
            handle.write(chunk)
    return Path(handle.name)


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
    archive = await run_in_threadpool(_spool_to_disk, file, spool_dir, int(settings.max_upload_mb * 1024 * 1024))
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
    children: dict[str, list[str]] = {}
    for record in reversed(data):  # oldest first
        if record.get("parent_id"):
            children.setdefault(record["parent_id"], []).append(record["id"])
    data = [{**record, "children": children.get(record["id"], [])} for record in data]
    return {"data": data, "count": len(data)}


@router.get("/{dataset_id}", response_model=DatasetPublic)
async def get_dataset(dataset_id: str, service: ServiceDep):
    record = await run_in_threadpool(service.datasets.get, dataset_id)
    return {**record, "children": await run_in_threadpool(service.datasets.children, dataset_id)}


def _inlined(schema: dict) -> dict:
    """A pydantic JSON schema with its `$defs` references replaced by the definitions (for openapi_extra,
    where `#/$defs/...` would point into the OpenAPI document's root)."""
    definitions = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


_VERSION_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inlined(DatasetVersionEdits.model_json_schema())},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "images to add (an archive)"},
                        "name": {"type": "string", "maxLength": 200},
                    },
                }
            },
        },
    }
}


@router.post(
    "/{dataset_id}/versions",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    summary="A new version: images added from an archive (multipart), or files moved/removed (JSON)",
    openapi_extra=_VERSION_BODY,
)
async def create_dataset_version(dataset_id: str, request: Request, service: ServiceDep, settings: SettingsDep):
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload, name = form.get("file"), form.get("name")
        if not isinstance(upload, StarletteUpload) or not (name is None or isinstance(name, str) and len(name) <= 200):
            raise RequestValidationError([{"type": "missing", "loc": ("body", "file"), "msg": "an archive `file`"}])
        archive = await run_in_threadpool(
            _spool_to_disk, upload, settings.cache.uploads, int(settings.max_upload_mb * 1024 * 1024)
        )
        try:
            return await run_in_threadpool(
                service.datasets.create_version, dataset_id, archive_path=archive, name=name or None
            )
        finally:
            archive.unlink(missing_ok=True)
    if not content_type.startswith("application/json"):
        raise NotAnImage("send JSON {move, remove} or a multipart archive `file`")
    try:
        body = DatasetVersionEdits.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False, include_context=False)) from None
    edits = VersionEdits(moves=[Move(item.path, item.to) for item in body.move], removals=list(body.remove))
    return await run_in_threadpool(service.datasets.create_version, dataset_id, edits=edits, name=body.name)


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
