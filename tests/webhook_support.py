"""A webhook receiver on loopback for the tests: an http.server thread that records every POST and
answers the status codes it is told to (then 200), and the secret the test services sign with."""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

# `whsec_` + base64 of 32 fixed bytes: what tests/conftest.py gives the live service as WEBHOOK_SECRET
TEST_WEBHOOK_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    def verified(self, secret: str = TEST_WEBHOOK_SECRET) -> dict:
        """The payload, once its Standard Webhooks signature checks out (raises otherwise)."""
        return Webhook(secret).verify(self.body, self.headers)


class WebhookReceiver:
    """`with WebhookReceiver(statuses=[500]) as receiver:` POSTs to `receiver.url` are kept in
    `receiver.received`; the n-th is answered `statuses[n]`, those past the list 200."""

    def __init__(self, statuses: list[int] | None = None, path: str = "/hook"):
        self.statuses = list(statuses or [])
        self.path = path
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    n = len(receiver.received)
                    status = receiver.statuses[n] if n < len(receiver.statuses) else 200
                    headers = {key.lower(): value for key, value in self.headers.items()}
                    receiver.received.append(Received(self.path, headers, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="webhook-receiver")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.path}"

    def wait_for(self, count: int, *, timeout: float) -> list[Received]:
        """The first `count` POSTs, once they have arrived (a hang guard, not a timing bound)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} webhook(s) received in {timeout:.0f}s, wanted {count}")
            time.sleep(0.1)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
