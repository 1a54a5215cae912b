from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.deps import ServiceDep
from app.schemas import JobCreate, JobPublic, ListPublic
from finetune.states import FINAL_STATUSES, JobStatus
from finetune.stores.jobs import eta_seconds

router = APIRouter(prefix="/jobs", tags=["jobs"])
EVENT_POLL_S = 0.25
EVENT_KEEPALIVE_S = 15.0


def _public(record: dict) -> dict:
    """The stored record with a fresh ETA (it shrinks between worker updates too)."""
    if record["status"] == JobStatus.RUNNING:
        record = {**record, "eta_seconds": eta_seconds(record["started_at"], record["progress"])}
    return record


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    summary="Start a fine-tuning job",
    responses={404: {"description": "unknown dataset"}, 409: {"description": "dataset being deleted"}},
)
async def create_job(spec: JobCreate, service: ServiceDep, request: Request, response: Response):
    record = await run_in_threadpool(service.create_job, spec)
    response.headers["Location"] = str(request.url_for("get_job", job_id=record["id"]))
    return record


@router.get("", response_model=ListPublic[JobPublic])
async def list_jobs(service: ServiceDep, status_filter: Annotated[JobStatus | None, Query(alias="status")] = None):
    data = [_public(record) for record in await run_in_threadpool(service.jobs.list, status=status_filter)]
    return {"data": data, "count": len(data)}


@router.get("/{job_id}", response_model=JobPublic, name="get_job")
async def get_job(job_id: str, service: ServiceDep):
    return _public(await run_in_threadpool(service.jobs.get, job_id))


@router.post(
    "/{job_id}/cancel", response_model=JobPublic, summary="Cancel a queued job at once, a running one at its next batch"
)
async def cancel_job(job_id: str, service: ServiceDep):
    return _public(await run_in_threadpool(service.jobs.request_cancel, job_id))


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    summary="Server-sent events: the job resource at every change, until a final state",
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def job_events(job_id: str, service: ServiceDep, request: Request):
    first = await run_in_threadpool(service.jobs.get, job_id)

    open_streams = request.app.state.metrics.event_streams

    async def stream():
        open_streams.inc()  # in /metrics: a stream whose client went away must not stay open
        try:
            record, last_sent, quiet = first, None, 0.0
            while True:
                payload = json.dumps(_public(record))
                if record != last_sent:
                    yield f"event: job\ndata: {payload}\n\n"
                    last_sent, quiet = record, 0.0
                if record["status"] in FINAL_STATUSES or await request.is_disconnected():
                    return
                if quiet >= EVENT_KEEPALIVE_S:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                await asyncio.sleep(EVENT_POLL_S)
                quiet += EVENT_POLL_S
                record = await run_in_threadpool(service.jobs.get, job_id)
        finally:
            open_streams.dec()

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
