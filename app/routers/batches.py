"""Batch predictions: label a whole archive, dataset or object-store prefix in the workers.

`POST /batches` takes either multipart (`file`: a .zip/.tar/.tar.gz of images in any folders, and the
options as form fields) or JSON (`dataset_id` or `source`, and the options). Results are served once
the batch is final (409 before): every row of the parts written, so a cancelled batch gives the rows
of the chunks finished before the cancel."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError

from app.deps import ServiceDep, SettingsDep
from app.schemas import BatchCreate, BatchOptions, BatchPublic, ListPublic
from app.uploads import spool_to_disk
from finetune.states import JobStatus

router = APIRouter(prefix="/batches", tags=["batches"])

MULTIPART_FIELDS = ("file", *BatchOptions.model_fields)
REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": BatchCreate.model_json_schema(ref_template="#/components/schemas/{model}")},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "a .zip, .tar or .tar.gz of images"},
                    "model_id": {"type": "string"},
                    "top_k": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                    "thresholds": {"type": "string", "description": "JSON object: class -> threshold"},
                    "chunk_size": {"type": "integer", "minimum": 1, "maximum": 10000},
                    "webhook_url": {"type": "string", "format": "uri"},
                },
            }
        },
    },
}


def _validated(schema: type[BaseModel], data: object) -> BaseModel:
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False, include_context=False)) from None


def _refused(message: str, location: str = "body") -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": [location], "msg": message, "input": None}])


async def _json_body(request: Request) -> object:
    try:
        return await request.json()
    except ValueError:
        raise _refused("the body is not valid JSON") from None


def _form_options(form) -> BatchOptions:
    unknown = sorted(set(form.keys()) - set(MULTIPART_FIELDS))
    if unknown:
        raise _refused(
            f"unknown field(s) {', '.join(unknown)}: an archive is the batch's one source; "
            f"give the other fields as {', '.join(BatchOptions.model_fields)}"
        )
    fields = {key: value for key, value in form.items() if key != "file"}
    if "thresholds" in fields:
        try:
            fields["thresholds"] = json.loads(fields["thresholds"])
        except (TypeError, ValueError):
            raise _refused("thresholds must be a JSON object of class -> threshold", "thresholds") from None
    return _validated(BatchOptions, fields)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchPublic,
    summary="Label every image of an archive, a dataset or an s3:// prefix in the workers",
    openapi_extra={"requestBody": REQUEST_BODY},
    responses={
        400: {"description": "corrupt or unsafe archive"},
        404: {"description": "unknown model or dataset, or nothing under `source`"},
        409: {"description": "the model's job has not finished"},
        413: {"description": "archive or batch too large"},
        415: {"description": "neither JSON nor multipart"},
        503: {"description": "the queue is unreachable"},
    },
)
async def create_batch(request: Request, service: ServiceDep, settings: SettingsDep, response: Response):
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=len(MULTIPART_FIELDS))
        upload = form.get("file")
        if not isinstance(upload, UploadFile) and not hasattr(upload, "file"):
            raise _refused("give a source: an archive as multipart `file`, or JSON with dataset_id or source", "file")
        options = _form_options(form)
        max_bytes = int(settings.max_upload_mb * 1024 * 1024)
        archive = await run_in_threadpool(spool_to_disk, upload, settings.cache.uploads, max_bytes)
        try:
            record = await run_in_threadpool(
                lambda: service.create_batch(
                    archive=archive, archive_name=Path(upload.filename or "").name or None, **options.service_options()
                )
            )
        finally:
            archive.unlink(missing_ok=True)
    elif content_type.startswith("application/json"):
        body = _validated(BatchCreate, await _json_body(request))
        record = await run_in_threadpool(
            lambda: service.create_batch(dataset_id=body.dataset_id, source=body.source, **body.service_options())
        )
    else:
        return Response(
            json.dumps({"detail": "send JSON (dataset_id or source) or multipart (an archive as `file`)"}),
            status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            media_type="application/json",
        )
    response.headers["Location"] = str(request.url_for("get_batch", batch_id=record["id"]))
    return record


@router.get("", response_model=ListPublic[BatchPublic])
async def list_batches(service: ServiceDep, status_filter: Annotated[JobStatus | None, Query(alias="status")] = None):
    data = await run_in_threadpool(service.batches.list, status=status_filter)
    return {"data": data, "count": len(data)}


@router.get("/{batch_id}", response_model=BatchPublic, name="get_batch")
async def get_batch(batch_id: str, service: ServiceDep):
    return await run_in_threadpool(service.batches.get, batch_id)


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchPublic,
    summary="Cancel a queued batch at once, a running one before its next results part",
    responses={404: {"description": "unknown batch"}, 409: {"description": "already final"}},
)
async def cancel_batch(batch_id: str, service: ServiceDep):
    return await run_in_threadpool(service.cancel_batch, batch_id)


@router.get(
    "/{batch_id}/results",
    response_class=StreamingResponse,
    summary="One row per image (JSON Lines, or CSV): its path, label or abstained, top-k, or its error",
    responses={
        200: {"content": {"application/x-ndjson": {}, "text/csv": {}}},
        404: {"description": "unknown batch"},
        409: {"description": "the batch has not ended yet"},
    },
)
async def batch_results(
    batch_id: str,
    service: ServiceDep,
    results_format: Annotated[Literal["jsonl", "csv"], Query(alias="format")] = "jsonl",
):
    record, rows = await run_in_threadpool(service.batch_results, batch_id)
    if results_format == "csv":
        return StreamingResponse(
            csv_lines(rows, top_k=record["top_k"]),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="batch-{batch_id}.csv"'},
        )
    return StreamingResponse((json.dumps(row) + "\n" for row in rows), media_type="application/x-ndjson")


def csv_header(top_k: int) -> list[str]:
    ranked = [name for rank in range(1, top_k + 1) for name in (f"label_{rank}", f"probability_{rank}")]
    return ["path", "label", "abstained", "error_type", "error_message", *ranked]


def csv_row(row: dict, top_k: int) -> list:
    """One image's line, as wide as the header (empty cells past the classes it has, or all, for an error)."""
    error = row["error"] or {}
    ranked = [value for p in row["predictions"] for value in (p["label"], p["probability"])]
    ranked += [""] * (2 * top_k - len(ranked))
    return [row["path"], row["label"] or "", row["abstained"], error.get("type", ""), error.get("message", ""), *ranked]


def csv_lines(rows: Iterable[dict], *, top_k: int) -> Iterator[str]:
    """The rows as CSV: path, label, abstained, the error, then label_i/probability_i for each of the top k."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(csv_header(top_k))
    for row in rows:
        writer.writerow(csv_row(row, top_k))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()
