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
from app.queue import make_enqueue
from app.routers import backbones, datasets, health, jobs, models, predict
from app.security import require_api_key
from finetune.errors import NotFound
from finetune.service import Service
from finetune.settings import Settings, get_settings

log = logging.getLogger("app")
STATIC_DIR = Path(__file__).parent / "static"

DESCRIPTION = """Upload labelled images, fine-tune an ImageNet backbone on them (the two-phase recipe:
train a new head on the frozen backbone, then fine-tune its last block), and classify images with
the result. Errors are `{"detail": ...}`."""


def _preload_newest_model(service: Service) -> None:
    """Loads and warms the newest model in the background, so the first /predict pays no tracing."""
    try:
        service.predictors.get(None)
    except NotFound:
        return
    except Exception:
        log.exception("could not preload the newest model; /predict will load it on first use")


def create_app(settings: Settings | None = None, *, enqueue=None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set (`make run` starts an embedded Redis and sets it)")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not settings.api_key_list:
            log.warning("*** API_KEYS is not set: every route is open to anyone who can reach this port ***")
        preload = asyncio.get_running_loop().run_in_executor(None, _preload_newest_model, app.state.service)
        yield
        preload.cancel()

    app = FastAPI(title="Fine-tuning service", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    if enqueue is None:  # not `enqueue or ...`: a recording enqueue may be falsy (an empty list)
        enqueue = make_enqueue(settings.redis_url)
    app.state.service = Service.from_settings(settings, enqueue=enqueue)
    app.state.metrics = AppMetrics(lambda: app.state.service)
    install_error_handlers(app)

    protected = [Depends(require_api_key)]
    for router in (datasets.router, jobs.router, models.router, predict.router, backbones.router,
                   health.metrics_router):
        app.include_router(router, dependencies=protected)
    app.include_router(health.router)

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        async def dashboard():
            return FileResponse(STATIC_DIR / "index.html")

    app.middleware("http")(app.state.metrics.middleware)
    if settings.cors_origin_list:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list, allow_methods=["*"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=int(settings.max_upload_mb * 1024 * 1024))
    return app


def __getattr__(name: str):
    """`app.main:app` is built on first access, so importing this module has no side effects."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
