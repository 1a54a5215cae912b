from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from app.schemas import BackbonePublic, LayerPublic, ListPublic
from finetune.errors import NotFound
from finetune.ml.backbones import BACKBONES, describe_layers

router = APIRouter(prefix="/backbones", tags=["backbones"])


@router.get("", response_model=ListPublic[BackbonePublic])
async def list_backbones():
    data = [
        {
            "name": b.name,
            "default_unfreeze_from": b.default_unfreeze_from,
            "min_image_size": b.min_image_size,
            "has_alpha": b.has_alpha,
            "alphas": list(b.alphas),
        }
        for b in BACKBONES.values()
    ]
    return {"data": data, "count": len(data)}


@router.get(
    "/{name}/layers", response_model=ListPublic[LayerPublic], summary="The backbone's layers, to choose `unfreeze_from`"
)
async def backbone_layers(name: str, alpha: Annotated[float | None, Query(gt=0, le=2)] = None):
    if name not in BACKBONES:
        raise NotFound(f"backbone {name!r} not found; choose one of {', '.join(BACKBONES)}")
    if not BACKBONES[name].has_alpha:
        alpha = None
    data = list(await run_in_threadpool(describe_layers, name, alpha))
    return {"data": data, "count": len(data)}
