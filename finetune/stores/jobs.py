"""Job records in Redis: one hash per job plus an index sorted by creation time.

The API creates and reads records; the worker updates them. A status change goes through
`transition`, a WATCH/MULTI check-and-set, so a cancel and a worker's start cannot both win.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import redis

from finetune.errors import BrokerUnavailable, Conflict, NotFound
from finetune.ids import check_id, now_iso
from finetune.ml.spec import JobSpec
from finetune.states import ACTIVE_STATUSES, FINAL_STATUSES, JobStatus
from finetune.stores.records import JobRecord

INDEX_KEY = "finetune:jobs"


def job_key(job_id: str) -> str:
    return f"finetune:job:{job_id}"


def new_job_record(spec: JobSpec) -> dict:
    return JobRecord.new(spec.model_dump(), spec.dataset_id).to_json()


def overall_progress(spec: dict, history: list[dict], phase: str | None, batch: int, batches: int) -> float:
    """Fraction of all epochs of both phases done, counting the current epoch's batches. A phase that
    early stopping ended (its last row `stopped_early`) counts the epochs it ran, not its spec's.

    `batch` counts batches of the epoch after `history`'s rows: at an epoch's end, when its row is in
    `history`, the caller passes 0 (its last batch counted whole before would otherwise count twice,
    and resetting it instead made the progress step back by an epoch until the row arrived).
    """
    total = sum(_phase_epochs(spec, history, name) for name in ("warmup", "finetune"))
    if total == 0:
        return 0.0
    partial = min(1.0, batch / batches) if phase in ("warmup", "finetune") and batches else 0.0
    return min(1.0, (len(history) + partial) / total)


def _phase_epochs(spec: dict, history: list[dict], phase: str) -> int:
    if not spec.get(phase):
        return 0
    rows = [row for row in history if row.get("phase") == phase]
    if rows and rows[-1].get("stopped_early"):
        return len(rows)
    return spec[phase]["epochs"]


def eta_seconds(started_at: str | None, progress: float, *, now: float | None = None) -> float | None:
    if not started_at or progress <= 0.0:
        return None
    elapsed = (now or time.time()) - datetime.fromisoformat(started_at).timestamp()
    return max(0.0, elapsed * (1.0 - progress) / progress)


class JobStore:
    def __init__(self, client: redis.Redis):
        self.redis = client

    @classmethod
    def from_url(cls, url: str) -> JobStore:
        return cls(
            redis.Redis.from_url(
                url, decode_responses=True, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30
            )
        )

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    def _guard(self, operation):
        try:
            return operation()
        except redis.RedisError as error:
            raise BrokerUnavailable(f"Redis is unreachable: {error}") from error

    def create(self, spec: JobSpec) -> dict:
        record = new_job_record(spec)
        created = datetime.fromisoformat(record["created_at"]).timestamp()

        def write():
            pipe = self.redis.pipeline()
            pipe.hset(
                job_key(record["id"]), mapping={"record": json.dumps(record), "status": JobStatus.QUEUED, "cancel": "0"}
            )
            pipe.zadd(INDEX_KEY, {record["id"]: created})
            pipe.execute()

        self._guard(write)
        return record

    def get(self, job_id: str) -> dict:
        check_id(job_id, kind="job")
        raw = self._guard(lambda: self.redis.hget(job_key(job_id), "record"))
        if raw is None:
            raise NotFound(f"job {job_id!r} not found")
        return json.loads(raw)

    def list(self, *, status: str | None = None, limit: int = 1000) -> list[dict]:
        def read():
            ids = self.redis.zrevrange(INDEX_KEY, 0, limit - 1)
            pipe = self.redis.pipeline()
            for job_id in ids:
                pipe.hget(job_key(job_id), "record")
            return pipe.execute()

        records = [json.loads(raw) for raw in self._guard(read) if raw]
        return [record for record in records if status is None or record["status"] == status]

    def update(self, job_id: str, patch: dict, *, allowed_from: frozenset[str] | None = None) -> dict:
        """Apply `patch` atomically; with `allowed_from`, only while the status is one of those."""

        def attempt():
            with self.redis.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(job_key(job_id))
                        raw = pipe.hget(job_key(job_id), "record")
                        if raw is None:
                            raise NotFound(f"job {job_id!r} not found")
                        record = json.loads(raw)
                        if allowed_from is not None and record["status"] not in allowed_from:
                            raise Conflict(f"job {job_id!r} is {record['status']}")
                        record.update(patch)
                        pipe.multi()
                        pipe.hset(job_key(job_id), mapping={"record": json.dumps(record), "status": record["status"]})
                        pipe.execute()
                        return record
                    except redis.WatchError:
                        continue

        return self._guard(attempt)

    def request_cancel(self, job_id: str) -> dict:
        """A queued job is cancelled at once; a running one is flagged and stops at its next batch."""
        record = self.get(job_id)
        if record["status"] in FINAL_STATUSES:
            raise Conflict(f"job {job_id!r} is already {record['status']}")
        self._guard(lambda: self.redis.hset(job_key(job_id), "cancel", "1"))
        try:
            return self.update(
                job_id,
                {"status": JobStatus.CANCELLED, "finished_at": now_iso(), "eta_seconds": None},
                allowed_from=frozenset({JobStatus.QUEUED}),
            )
        except Conflict:
            return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return self._guard(lambda: self.redis.hget(job_key(job_id), "cancel")) == "1"

    def heartbeat(self, job_id: str, worker: str) -> None:
        self._guard(lambda: self.redis.hset(job_key(job_id), mapping={"heartbeat": time.time(), "worker": worker}))

    def release_heartbeat(self, job_id: str, worker: str) -> bool:
        """Forget the heartbeat `worker` wrote, once it is known dead, so the job can be run again at
        once; a heartbeat written since by another worker is kept. True if one was forgotten."""

        def attempt():
            with self.redis.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(job_key(job_id))
                        if pipe.hget(job_key(job_id), "worker") != worker:
                            pipe.unwatch()
                            return False
                        pipe.multi()
                        pipe.hdel(job_key(job_id), "heartbeat")
                        pipe.execute()
                        return True
                    except redis.WatchError:
                        continue

        return self._guard(attempt)

    def last_heartbeat(self, job_id: str) -> float | None:
        value = self._guard(lambda: self.redis.hget(job_key(job_id), "heartbeat"))
        return float(value) if value else None

    def jobs_on_dataset(self, dataset_id: str) -> list[dict]:
        return [
            record
            for record in self.list()
            if record["dataset_id"] == dataset_id and record["status"] in ACTIVE_STATUSES
        ]

    def counts_by_status(self) -> dict[str, int]:
        counts = {str(status): 0 for status in JobStatus}
        for record in self.list(limit=100_000):
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return counts

    def delete(self, job_id: str) -> None:
        self._guard(lambda: self.redis.delete(job_key(job_id)))
        self._guard(lambda: self.redis.zrem(INDEX_KEY, job_id))
