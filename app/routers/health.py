from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.deps import ServiceDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz():
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: Redis (the broker) is reachable",
    responses={503: {"description": "Redis unreachable"}},
)
async def readyz(service: ServiceDep):
    if await run_in_threadpool(service.jobs.ping):
        return {"status": "ready"}
    return JSONResponse(status_code=503, content={"detail": "Redis is unreachable"})


metrics_router = APIRouter(tags=["health"])


@metrics_router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
async def metrics(request: Request):
    body = await run_in_threadpool(request.app.state.metrics.exposition)
    return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)
