"""API keys: `Authorization: Bearer <key>` or `X-API-Key`, compared in constant time, never logged."""

from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.responses import JSONResponse

from finetune.errors import Unauthorized

MESSAGE = "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


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


async def require_api_key(request: Request) -> None:
    """Every protected route's dependency (async: no thread hop, see app/deps.py)."""
    keys = request.app.state.settings.api_key_list
    if keys and not key_is_valid(presented_key(request), keys):
        raise Unauthorized(MESSAGE)


class EarlyApiKeyCheck:
    """Refuses a request that may carry a body (POST, PUT, PATCH, DELETE: every such route is protected)
    without a valid key before its body is read. FastAPI parses a whole multipart upload before it runs
    the `require_api_key` dependency, so without this anyone could make the API read and spool
    MAX_UPLOAD_MB just to be told 401. The dependency stays the check for every other request."""

    def __init__(self, app, *, keys: list[str]):
        self.app, self.keys = app, keys

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] == "http"
            and self.keys
            and scope["method"] in BODY_METHODS
            and not key_is_valid(presented_key(Request(scope)), self.keys)
        ):
            response = JSONResponse({"detail": MESSAGE}, status_code=401, headers={"Connection": "close"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)
