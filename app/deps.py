"""`Annotated` dependencies: the settings and the service, built once per app in its lifespan.

Every dependency here (and `require_api_key`) is `async def`: FastAPI runs a plain `def` dependency in
its thread pool, a thread hop per dependency per request for a mere attribute read."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from finetune.service import Service
from finetune.settings import Settings


async def get_service(request: Request) -> Service:
    return request.app.state.service


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


ServiceDep = Annotated[Service, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
