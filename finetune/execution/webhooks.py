"""Webhooks: which targets may be called, how a message is signed, and the thread that delivers them.

A job (or a batch) with a `webhook_url` is told of its final status (and, if it asks, of every epoch)
by a POST signed the Standard Webhooks way (https://www.standardwebhooks.com): headers `webhook-id`
(the same on every retry of one message), `webhook-timestamp` (this attempt's, in seconds) and
`webhook-signature` (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` under WEBHOOK_SECRET),
made by the `standardwebhooks` package, so a receiver verifies with that package's `Webhook.verify`.

Delivery never touches the job: the status change and its message are written together to Redis
(stores/webhooks.py) and a `WebhookDispatcher` thread, running in every API and worker process like
the reaper, POSTs them. Not a Celery task: the workers run one task at a time (`--pool=solo`) for
hours, so a webhook queued behind a training job would wait for it, and a queue of its own would
need a worker of its own in every deployment; a thread that polls the outbox needs neither, and
keeps delivering while every worker is busy or dead (the API runs one too). Not a thread of the job
process: that process exits when its job ends, while retries go on for WEBHOOK_RETRY_FOR_S.

Retries: any answer but 2xx, and any network error, is retried after WEBHOOK_BACKOFF_S, doubling
up to WEBHOOK_BACKOFF_MAX_S, until WEBHOOK_RETRY_FOR_S after the event; each attempt is appended
to the record's `webhook_deliveries`. Redirects are not followed (one could lead anywhere).

Targets: only http(s), and only hosts that resolve to public addresses, unless WEBHOOK_ALLOW_PRIVATE
(cloud metadata addresses are refused even then). Checked when the job is created (422) and again
at every attempt, where the connection goes to the very address that was checked (DNS can change
between the check and the connect; a host name is still sent as `Host` and as the TLS server name).

For other records (batches): `notify(settings, url=..., kind="batch", record_id=..., record_key=...,
event="batch.succeeded", data=record)`, where `record_key` is the Redis hash whose `record` field
holds the record's JSON (the attempts are appended there); `check_webhook_url(settings, url)` when
the record is created.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from math import floor
from urllib.parse import urlsplit

import redis
from standardwebhooks import Webhook

from finetune.errors import InvalidSpec
from finetune.settings import Settings
from finetune.stores.records import WebhookDelivery
from finetune.stores.webhooks import WebhookMessage, WebhookOutbox

log = logging.getLogger("finetune.execution.webhooks")

SCHEMES = {"http": 80, "https": 443}
# Instance metadata services (AWS, AWS ECS, GCP/Azure share the first; Alibaba; Azure's wire server):
# credentials live there, so they stay refused even with WEBHOOK_ALLOW_PRIVATE.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)
USER_AGENT = "finetune-webhooks/1"
DISPATCH_POLL_S = 0.5
DISPATCH_THREADS = 4
RESPONSE_READ_LIMIT = 64 * 1024


class WebhookTargetRefused(InvalidSpec):
    """A webhook URL this server will not call (scheme, or the addresses its host resolves to)."""


class WebhookHostUnresolved(InvalidSpec):
    """The webhook URL's host does not resolve (now: at delivery it is retried)."""


def address_refusal(address: str, *, allow_private: bool = False) -> str | None:
    """Why a webhook must not go to `address` (e.g. "loopback"), or None when it may."""
    ip = ipaddress.ip_address(address)
    embedded = getattr(ip, "ipv4_mapped", None) or getattr(ip, "sixtofour", None)
    if embedded is not None:
        ip = embedded
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if allow_private:
        return None
    kinds = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not a public address", not ip.is_global),
    )
    return next((name for name, applies in kinds if applies), None)


@dataclass(frozen=True)
class Target:
    """A checked webhook URL: where to connect (the addresses checked) and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


def resolve_target(url: str, *, allow_private: bool) -> Target:
    """The URL's target once its scheme and every address its host resolves to pass; else
    WebhookTargetRefused (or WebhookHostUnresolved)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise WebhookTargetRefused(f"webhook_url must be an http or https URL, not {parts.scheme or 'schemeless'!r}")
    if not parts.hostname:
        raise WebhookTargetRefused("webhook_url has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookTargetRefused("webhook_url must not carry credentials (sign with WEBHOOK_SECRET instead)")
    try:
        port = parts.port or SCHEMES[parts.scheme]
    except ValueError as error:
        raise WebhookTargetRefused(f"webhook_url has a bad port: {error}") from error
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise WebhookHostUnresolved(f"webhook_url's host {parts.hostname!r} does not resolve: {error}") from error
    addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses:
        reason = address_refusal(address, allow_private=allow_private)
        if reason is not None:
            hint = "" if reason == "a cloud metadata address" else " (WEBHOOK_ALLOW_PRIVATE=true allows it)"
            raise WebhookTargetRefused(
                f"webhook_url's host {parts.hostname!r} resolves to {address}, {reason}: refused{hint}"
            )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme=parts.scheme, host=parts.hostname, port=port, path=path, addresses=addresses)


def check_webhook_url(settings: Settings, url: str) -> None:
    """What a create route asks before storing a record with `url` (422 when refused)."""
    if settings.webhook_secret is None:
        raise InvalidSpec("webhook_url: this server has no WEBHOOK_SECRET to sign webhooks with; ask its operator")
    resolve_target(url, allow_private=settings.webhook_allow_private)


def signed_headers(secret: str, message_id: str, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt at `at`."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(floor(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id=message_id, timestamp=at, data=body),
    }


def _connect(target: Target, timeout: float) -> socket.socket:
    """A connection to the first of the checked addresses that answers."""
    last_error: OSError | None = None
    for address in target.addresses:
        try:
            return socket.create_connection((address, target.port), timeout=timeout)
        except OSError as error:
            last_error = error
    raise last_error or OSError(f"no address for {target.host}")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to the checked addresses only (never a fresh DNS answer)."""

    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self.target = target

    def connect(self) -> None:
        self.sock = _connect(self.target, self.timeout)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """The same over TLS, the certificate checked against the URL's host name."""

    default_port = 443

    def connect(self) -> None:
        sock = _connect(self.target, self.timeout)
        self.sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.target.host)


def post(target: Target, body: bytes, headers: dict[str, str], *, timeout: float) -> int:
    """POST `body` to `target`; the receiver's status code (redirects are not followed)."""
    connection_class = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(target, timeout)
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(RESPONSE_READ_LIMIT)
        return response.status
    finally:
        connection.close()


def retry_delay(settings: Settings, attempts: int) -> float:
    """The wait after the `attempts`-th failed attempt: exponential, capped."""
    return min(settings.webhook_backoff_max_s, settings.webhook_backoff_s * 2 ** (attempts - 1))


def attempt_delivery(settings: Settings, message: WebhookMessage) -> tuple[WebhookDelivery, float | None]:
    """Make one attempt (the message's next); the attempt as recorded, and when to retry (None: never)."""
    message.attempts += 1
    at = datetime.now(UTC)
    status_code, error, retryable = None, None, True
    try:
        if settings.webhook_secret is None:
            raise RuntimeError("this server has no WEBHOOK_SECRET to sign with")
        target = resolve_target(message.url, allow_private=settings.webhook_allow_private)
        body = message.body
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **signed_headers(settings.webhook_secret.get_secret_value(), message.id, body, at),
        }
        status_code = post(target, body.encode(), headers, timeout=settings.webhook_timeout_s)
    except WebhookTargetRefused as refused:
        error, retryable = refused.message, False
    except (OSError, http.client.HTTPException, WebhookHostUnresolved, RuntimeError) as failure:
        error = f"{type(failure).__name__}: {failure}"
    delivered = status_code is not None and 200 <= status_code < 300
    next_at = None
    if not delivered and retryable:
        when = time.time() + retry_delay(settings, message.attempts)
        next_at = when if when <= message.created_at + settings.webhook_retry_for_s else None
    attempt = WebhookDelivery(
        webhook_id=message.id,
        event=message.event,
        attempt=message.attempts,
        at=at.isoformat(),
        status_code=status_code,
        error=error,
        delivered=delivered,
        next_attempt_at=datetime.fromtimestamp(next_at, UTC).isoformat() if next_at else None,
    )
    return attempt, next_at


def deliver(settings: Settings, outbox: WebhookOutbox, message_id: str) -> WebhookDelivery | None:
    """One attempt at a claimed message: recorded on its record, then the message retried or finished."""
    message = outbox.get(message_id)
    if message is None:
        outbox.finish(message_id)
        return None
    attempt, next_at = attempt_delivery(settings, message)
    if not outbox.record_attempt(message.record_key, attempt.model_dump(mode="json")):
        log.info(
            "webhook %s: %s %s is gone; its attempts are not recorded", message.id, message.kind, message.record_id
        )
    if next_at is None:
        outbox.finish(message.id)
    else:
        outbox.retry_at(message, next_at)
    level = logging.INFO if attempt.delivered else logging.WARNING
    subject = f"{message.id} ({message.event}, {message.kind} {message.record_id})"
    log.log(level, "webhook %s attempt %d: %s", subject, attempt.attempt, attempt.status_code or attempt.error)
    return attempt


def outbox_from_settings(settings: Settings) -> WebhookOutbox:
    return WebhookOutbox(
        redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=3)
    )


def notify(
    settings: Settings, *, url: str, kind: str, record_id: str, record_key: str, event: str, data: dict
) -> WebhookMessage:
    """Queue a webhook for any record (a batch's final status); a dispatcher delivers it. Job records
    need not call this: `JobStore.update` queues theirs in the same transaction as the change."""
    message = WebhookMessage.new(url=url, kind=kind, record_id=record_id, record_key=record_key, event=event, data=data)
    WebhookOutbox.add(outbox_from_settings(settings).redis, message)
    return message


class WebhookDispatcher(threading.Thread):
    """Claims due messages from the outbox and delivers them on a few threads, one attempt each."""

    def __init__(self, settings: Settings, *, threads: int = DISPATCH_THREADS, poll_s: float = DISPATCH_POLL_S):
        super().__init__(daemon=True, name="finetune-webhooks")
        self.settings, self.threads, self.poll_s = settings, threads, poll_s
        self.stopped = threading.Event()
        # a claimed message is another dispatcher's to retry once this long has passed without an answer:
        # longer than an attempt takes (the timeout bounds the connect and each read of the answer)
        self.lease_s = 3 * settings.webhook_timeout_s + 30

    def run(self) -> None:
        outbox = outbox_from_settings(self.settings)
        in_flight: set[Future] = set()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="webhook") as pool:
            while not self.stopped.wait(self.poll_s):
                in_flight = {future for future in in_flight if not future.done()}
                free = self.threads - len(in_flight)
                if free <= 0:
                    continue
                try:
                    claimed = outbox.claim_due(lease_s=self.lease_s, limit=free)
                except redis.RedisError:
                    log.warning("webhook dispatcher could not reach Redis", exc_info=True)
                    continue
                for message_id in claimed:
                    in_flight.add(pool.submit(self._deliver, outbox, message_id))

    def _deliver(self, outbox: WebhookOutbox, message_id: str) -> None:
        try:
            deliver(self.settings, outbox, message_id)
        except Exception:  # e.g. Redis gone mid-way: the lease runs out and the message is tried again
            log.exception("webhook %s: delivery attempt broke off; retried after its lease", message_id)


def start_dispatcher(settings: Settings) -> WebhookDispatcher:
    dispatcher = WebhookDispatcher(settings)
    dispatcher.start()
    return dispatcher
