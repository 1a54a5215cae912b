"""`Annotated` dependencies: the settings and the service, built once per app in its lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from finetune.service import Service
from finetune.settings import Settings


def get_service(request: Request) -> Service:
    return request.app.state.service


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


ServiceDep = Annotated[Service, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
