"""The FastAPI app: `uvicorn app.main:app`."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.errors import install_error_handlers
from app.limits import BodySizeLimitMiddleware
from app.metrics import AppMetrics
from app.predict_fast_path import PredictFastPath
from app.queue import make_enqueue, make_enqueue_batch, make_enqueue_export
from app.routers import aliases, backbones, batches, datasets, exports, health, jobs, models, predict
from app.security import EarlyApiKeyCheck, require_api_key
from finetune.errors import NotFound
from finetune.execution.reaper import start_reaper
from finetune.execution.webhooks import start_dispatcher
from finetune.ml.backbones import BACKBONES, describe_layers
from finetune.ml.predictor import set_threads_per_op
from finetune.service import Service
from finetune.settings import Settings, get_settings
from finetune.stores.location import remove_stale_temporaries

log = logging.getLogger("app")
STATIC_DIR = Path(__file__).parent / "static"
WARM_BACKBONES = ("vgg16", "mobilenet")

DESCRIPTION = """Upload labelled images, fine-tune an ImageNet backbone on them (the two-phase recipe:
train a new head on the frozen backbone, then fine-tune its last block), and classify images with
the result. Errors are `{"detail": ...}`."""


def _warm_up(service: Service) -> None:
    """In the background: load and warm the newest model, so the first /predict pays no tracing,
    and learn the common backbones' layers, so the first POST /jobs need not build one to
    check `unfreeze_from`."""
    try:
        service.predictors.get(None)
    except NotFound:
        pass
    except Exception:
        log.exception("could not preload the newest model; /predict will load it on first use")
    for name in WARM_BACKBONES:
        describe_layers(name, 1.0 if BACKBONES[name].has_alpha else None)


def _remove_leftovers(service: Service, settings: Settings) -> None:
    """What a process killed mid-write left behind: spooled uploads (the spool folder of
    `routers/datasets.py`) and staging folders of datasets and models, once untouched for
    STALE_TEMP_AFTER_S, so an upload or save still in flight in another process is left alone."""
    older = settings.stale_temp_after_s
    try:
        removed = [
            *remove_stale_temporaries(settings.cache.uploads, prefixes=(".upload-",), older_than_s=older),
            *service.datasets.remove_stale_staging(older_than_s=older),
            *service.models.remove_stale_staging(older_than_s=older),
        ]
    except Exception:
        log.exception("could not remove the leftovers of interrupted uploads and saves")
        return
    if removed:
        log.warning("removed %d leftover(s) of interrupted uploads and saves: %s", len(removed), ", ".join(removed))


def create_app(settings: Settings | None = None, *, enqueue=None, enqueue_export=None, enqueue_batch=None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set (`make run` starts an embedded Redis and sets it)")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not settings.api_key_list:
            log.warning("*** API_KEYS is not set: every route is open to anyone who can reach this port ***")
        if not set_threads_per_op(settings.predict_threads):
            log.warning(
                "TensorFlow ran before the API started: PREDICT_THREADS=%d not applied", settings.predict_threads
            )
        await asyncio.get_running_loop().run_in_executor(None, _remove_leftovers, app.state.service, settings)
        preload = asyncio.get_running_loop().run_in_executor(None, _warm_up, app.state.service)
        reaper = start_reaper(
            settings, enqueue=app.state.service.enqueue, enqueue_batch=app.state.service.enqueue_batch
        )
        webhooks = start_dispatcher(settings)
        yield
        webhooks.stopped.set()
        reaper.stopped.set()
        preload.cancel()

    app = FastAPI(title="Fine-tuning service", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    if enqueue is None:  # not `enqueue or ...`: a recording enqueue may be falsy (an empty list)
        enqueue = make_enqueue(settings.redis_url)
    app.state.metrics = AppMetrics(lambda: app.state.service)
    if enqueue_export is None:
        enqueue_export = make_enqueue_export(settings.redis_url)
    if enqueue_batch is None:
        enqueue_batch = make_enqueue_batch(settings.redis_url)
    app.state.service = Service.from_settings(
        settings,
        enqueue=enqueue,
        on_batch=app.state.metrics.observe_batch,
        enqueue_export=enqueue_export,
        enqueue_batch=enqueue_batch,
    )
    install_error_handlers(app)

    protected = [Depends(require_api_key)]
    for router in (
        datasets.router,
        jobs.router,
        models.router,
        aliases.router,
        exports.router,
        batches.router,
        predict.router,
        backbones.router,
        health.metrics_router,
    ):
        app.include_router(router, dependencies=protected)
    app.include_router(health.router)

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        async def dashboard():
            return FileResponse(STATIC_DIR / "index.html")

    app.add_middleware(PredictFastPath, api=app)  # innermost: inside the key check, the metrics and the limit
    app.add_middleware(EarlyApiKeyCheck, keys=settings.api_key_list)
    app.add_middleware(app.state.metrics.middleware)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["*"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=int(settings.max_upload_mb * 1024 * 1024))
    return app


def __getattr__(name: str):
    """`app.main:app` is built on first access, so importing this module has no side effects."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
