"""`POST /predict` without FastAPI's routing, dependency and form machinery, for the requests it can answer.

FastAPI spent ~1 ms of the event loop per /predict on matching the route among all the others, solving
its dependencies and building `UploadFile`s from the multipart body (`cProfile` of the app called
in-process with the forward pass faked); with 8 clients the event loop is what limits /predict. This
middleware answers the plain case itself: a multipart body of known length (at most FAST_PATH_MAX_BYTES)
whose parts are `file`s (with a filename) and at most one each of `model_id`, `top_k` and `threshold`,
each of which parses as the route's own form declares. It calls the route's own `classify`, and answers
a domain error the way the app's error handler does. Anything else (another field, a value out of range,
a body without a length, an unreadable multipart) is handed to the app with the body it has read, so the
FastAPI route answers it, 422 and all. It sits inside the API-key check, the body limit and the metrics
middleware, and names the route in the scope as the router would, so those see /predict as before.
"""

from __future__ import annotations

import json
import math
import re

from python_multipart.multipart import MultipartParser, parse_options_header

from app.routers.predict import TOP_K_MAX, classify
from app.routers.predict import router as predict_router
from finetune.errors import DomainError
from finetune.ml.predictor import ImageInput

FAST_PATH_MAX_BYTES = 16 * 1024 * 1024
_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?|\.[0-9]+([eE][+-]?[0-9]+)?")
_FIELDS = frozenset({"model_id", "top_k", "threshold"})


class NotPlain(Exception):
    """The request is not one the fast path answers: the FastAPI route does."""


class _Form:
    """The parts of a multipart body, collected by python-multipart's streaming parser."""

    def __init__(self):
        self.files: list[ImageInput] = []
        self.fields: dict[str, str] = {}
        self._headers: list[tuple[bytes, bytes]] = []
        self._field, self._value = b"", b""
        self._name: str | None = None
        self._filename: str | None = None
        self._data: list[bytes] = []

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda data, start, end: self._data.append(data[start:end]),
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers, self._field, self._value, self._data = [], b"", b"", []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((self._field.lower(), self._value))
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        disposition = dict(self._headers).get(b"content-disposition")
        if disposition is None:
            raise NotPlain("a part without Content-Disposition")
        _, options = parse_options_header(disposition)
        try:
            self._name = options[b"name"].decode()
            self._filename = options[b"filename"].decode() if b"filename" in options else None
        except (KeyError, UnicodeDecodeError) as error:
            raise NotPlain("a part without a readable name") from error

    def _part_end(self) -> None:
        data = b"".join(self._data)
        if self._name == "file" and self._filename is not None:
            self.files.append(ImageInput(name=self._filename or f"file{len(self.files)}", data=data))
        elif self._name in _FIELDS and self._filename is None and self._name not in self.fields:
            try:
                self.fields[self._name] = data.decode()
            except UnicodeDecodeError as error:
                raise NotPlain(f"{self._name} is not UTF-8") from error
        else:
            raise NotPlain(f"a part the fast path does not take: {self._name!r}")


def parse_plain_form(body: bytes, content_type: bytes) -> tuple[list[ImageInput], str | None, int, float | None]:
    """(images, model_id, top_k, threshold) of a plain /predict body; NotPlain for anything else."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise NotPlain("not multipart/form-data")
    form = _Form()
    parser = MultipartParser(options[b"boundary"], form.callbacks())
    try:
        parser.write(body)
        parser.finalize()
    except NotPlain:
        raise
    except Exception as error:  # python-multipart's own errors on a malformed body
        raise NotPlain(f"malformed multipart: {error}") from error
    if not form.files:
        raise NotPlain("no file")
    return form.files, form.fields.get("model_id") or None, _top_k(form.fields), _threshold(form.fields)


def _top_k(fields: dict[str, str]) -> int:
    text = fields.get("top_k")
    if text is None:
        return 5
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= TOP_K_MAX:
        raise NotPlain("top_k")
    return int(text)


def _threshold(fields: dict[str, str]) -> float | None:
    text = fields.get("threshold")
    if text is None:
        return None
    if not _NUMBER.fullmatch(text):
        raise NotPlain("threshold")
    value = float(text)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise NotPlain("threshold")
    return value


class PredictFastPath:
    """Pure ASGI middleware; `api` is the FastAPI app (its state: the service, settings and metrics)."""

    def __init__(self, app, *, api):
        self.app, self.api = app, api
        (self.route,) = [route for route in predict_router.routes if getattr(route, "path", None) == "/predict"]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/predict":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        if not length.isdigit() or int(length) > FAST_PATH_MAX_BYTES:
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        if body is None:  # the client went away: no one to answer
            return
        try:
            images, model_id, top_k, threshold = parse_plain_form(body, headers.get(b"content-type", b""))
        except NotPlain:
            return await self.app(scope, _replay(body, receive), send)
        scope["route"] = self.route
        try:
            result = await classify(self.api, images, model_id=model_id, top_k=top_k, threshold=threshold)
        except DomainError as error:
            return await _send_json(send, error.status_code, {"detail": error.message})
        await _send_json(send, 200, result)


async def _read_body(receive) -> bytes | None:
    """The whole body; None when the client disconnected before sending it."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """A `receive` that gives the app the body already read, then whatever the client sends next."""
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_json(send, status: int, content: dict) -> None:
    """As Starlette's JSONResponse renders it."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
