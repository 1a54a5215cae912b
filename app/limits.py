"""Request bodies over the configured size get 413 before they are read whole."""

from __future__ import annotations

import json


class BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """Refuses by `Content-Length` at once, and counts the bytes of bodies without one."""

    def __init__(self, app, *, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)
        received = 0
        response_started = overflowed = replaced = False

        async def counting_receive():
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    overflowed = True
                    raise BodyTooLarge()
            return message

        async def tracking_send(message):
            # FastAPI turns any exception while it parses a form into its own 400 ("error parsing the
            # body"), so BodyTooLarge may never reach the `except` below: answer 413 in its place.
            nonlocal response_started, replaced
            if message["type"] == "http.response.start":
                if overflowed and not response_started:
                    response_started = replaced = True
                    await self._refuse(send)
                    return
                response_started = True
            elif replaced:
                return
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = json.dumps({"detail": f"request body larger than {self.max_bytes / (1024 * 1024):g} MB"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
