"""API keys: `Authorization: Bearer <key>` or `X-API-Key`, compared in constant time, never logged."""

from __future__ import annotations

import hmac

from fastapi import Request

from finetune.errors import Unauthorized


def presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return request.headers.get("x-api-key")


def key_is_valid(presented: str | None, keys: list[str]) -> bool:
    if presented is None:
        return False
    candidate = presented.encode()
    matches = [hmac.compare_digest(candidate, key.encode()) for key in keys]
    return any(matches)


def require_api_key(request: Request) -> None:
    keys = request.app.state.settings.api_key_list
    if keys and not key_is_valid(presented_key(request), keys):
        raise Unauthorized("a valid API key is required (Authorization: Bearer <key> or X-API-Key)")
