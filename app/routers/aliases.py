"""Aliases: stable names for models (`PUT /aliases/production`), moved and rolled back without a redeploy."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from fastapi.concurrency import run_in_threadpool

from app.deps import ServiceDep
from app.schemas import AliasPublic, AliasSet, ListPublic
from finetune.ids import ALIAS_PATTERN

router = APIRouter(prefix="/aliases", tags=["aliases"])
AliasName = Annotated[str, Path(pattern=ALIAS_PATTERN, description="lower-case letters, digits, `_` and `-`")]


@router.get("", response_model=ListPublic[AliasPublic])
async def list_aliases(service: ServiceDep):
    data = await run_in_threadpool(service.models.aliases.list)
    return {"data": data, "count": len(data)}


@router.get("/{name}", response_model=AliasPublic, responses={404: {"description": "no such alias"}})
async def get_alias(name: AliasName, service: ServiceDep):
    return await run_in_threadpool(service.models.aliases.get, name)


@router.put(
    "/{name}",
    response_model=AliasPublic,
    summary="Point an alias at a model (created if new)",
    responses={404: {"description": "unknown model"}, 409: {"description": "the name is a model id"}},
)
async def set_alias(name: AliasName, body: AliasSet, service: ServiceDep):
    return await run_in_threadpool(service.set_alias, name, body.model_id)


@router.post(
    "/{name}/rollback",
    response_model=AliasPublic,
    summary="Point an alias back at its previous model",
    responses={404: {"description": "no such alias"}, 409: {"description": "no previous model"}},
)
async def rollback_alias(name: AliasName, service: ServiceDep):
    return await run_in_threadpool(service.rollback_alias, name)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses={404: {"description": "no such alias"}})
async def delete_alias(name: AliasName, service: ServiceDep):
    await run_in_threadpool(service.delete_alias, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
