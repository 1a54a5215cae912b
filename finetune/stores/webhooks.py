"""The webhook outbox in Redis: messages waiting to be POSTed, and the attempts recorded on their records.

A message is written to the outbox in the same Redis transaction as the status change it reports
(see `JobStore.update`), so a final status is never stored without its message, and never waits for
one: the HTTP delivery happens later, in another thread (finetune/execution/webhooks.py). A message
is claimed for a lease rather than removed, so one whose deliverer dies mid-attempt is tried again
once the lease runs out (at least once; receivers de-duplicate by `webhook-id`).

Keys: `finetune:webhooks:due` (a sorted set: message id -> when it is next due, epoch seconds) and
`finetune:webhook:<message id>` (a hash; field `message`: the JSON below).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import redis

from finetune.ids import new_id, now_iso

DUE_KEY = "finetune:webhooks:due"
RECORD_FIELD = "record"  # the hash field holding a record's JSON (job records; batch records alike)
MAX_RECORDED_ATTEMPTS = 200  # a record keeps its newest attempts only (an epoch event per epoch adds up)


def message_key(message_id: str) -> str:
    return f"finetune:webhook:{message_id}"


@dataclass
class WebhookMessage:
    """One event for one URL. `body` is the exact JSON text POSTed (and signed) on every attempt;
    `record_key` is the Redis hash whose `record` JSON gets the attempts (`webhook_deliveries`)."""

    id: str
    url: str
    event: str
    kind: str
    record_id: str
    record_key: str
    body: str
    created_at: float = field(default_factory=time.time)
    attempts: int = 0

    @classmethod
    def new(cls, *, url: str, kind: str, record_id: str, record_key: str, event: str, data: dict) -> WebhookMessage:
        """The Standard Webhooks payload shape: `{type, timestamp, data}`."""
        body = json.dumps({"type": event, "timestamp": now_iso(), "data": data}, separators=(",", ":"))
        return cls(
            id=f"msg_{new_id()}", url=url, event=event, kind=kind, record_id=record_id, record_key=record_key, body=body
        )


# Atomically: the ids due by ARGV[1] (at most ARGV[3]), each pushed to ARGV[2] (its lease's end), so two
# deliverers never take the same message while its lease runs.
_CLAIM_SCRIPT = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


class WebhookOutbox:
    def __init__(self, client: redis.Redis):
        self.redis = client
        self._claim = client.register_script(_CLAIM_SCRIPT)

    @staticmethod
    def add(pipe, message: WebhookMessage) -> None:
        """Queue `message` on `pipe` (a Redis client, or a pipeline inside the caller's transaction)."""
        pipe.hset(message_key(message.id), "message", json.dumps(asdict(message)))
        pipe.zadd(DUE_KEY, {message.id: message.created_at})

    def claim_due(self, *, lease_s: float, limit: int) -> list[str]:
        now = time.time()
        return list(self._claim(keys=[DUE_KEY], args=[now, now + lease_s, limit]))

    def get(self, message_id: str) -> WebhookMessage | None:
        raw = self.redis.hget(message_key(message_id), "message")
        return WebhookMessage(**json.loads(raw)) if raw else None

    def retry_at(self, message: WebhookMessage, when: float) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(message_key(message.id), "message", json.dumps(asdict(message)))
        pipe.zadd(DUE_KEY, {message.id: when})
        pipe.execute()

    def finish(self, message_id: str) -> None:
        """Delivered, refused or out of retries: the message leaves the outbox."""
        pipe = self.redis.pipeline()
        pipe.zrem(DUE_KEY, message_id)
        pipe.delete(message_key(message_id))
        pipe.execute()

    def pending(self) -> int:
        return int(self.redis.zcard(DUE_KEY))

    def record_attempt(self, record_key: str, attempt: dict) -> bool:
        """Append `attempt` to the record's `webhook_deliveries` (a check-and-set, so a concurrent status
        update is kept). False when the record is gone (deleted since)."""
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(record_key)
                    raw = pipe.hget(record_key, RECORD_FIELD)
                    if raw is None:
                        pipe.unwatch()
                        return False
                    record = json.loads(raw)
                    deliveries = [*record.get("webhook_deliveries", []), attempt][-MAX_RECORDED_ATTEMPTS:]
                    record["webhook_deliveries"] = deliveries
                    pipe.multi()
                    pipe.hset(record_key, RECORD_FIELD, json.dumps(record))
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue
