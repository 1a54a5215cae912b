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
    """Fraction of all epochs of both phases done, counting the current epoch's batches."""
    total = spec["warmup"]["epochs"] + (spec["finetune"]["epochs"] if spec.get("finetune") else 0)
    if total == 0:
        return 0.0
    partial = batch / batches if phase in ("warmup", "finetune") and batches else 0.0
    if partial >= 1.0:
        partial = 0.0
    return min(1.0, (len(history) + partial) / total)


def eta_seconds(started_at: str | None, progress: float, *, now: float | None = None) -> float | None:
    if not started_at or progress <= 0.0:
        return None
    elapsed = (now or time.time()) - datetime.fromisoformat(started_at).timestamp()
    return max(0.0, elapsed * (1.0 - progress) / progress)


class JobStore:
    """Records in Redis, one hash each plus an index; subclasses keep other kinds (batches) the same way."""

    KIND = "job"
    KEY_PREFIX = "finetune:job:"
    INDEX_KEY = INDEX_KEY

    def __init__(self, client: redis.Redis):
        self.redis = client

    def key(self, record_id: str) -> str:
        return f"{self.KEY_PREFIX}{record_id}"

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
        return self.insert(new_job_record(spec))

    def insert(self, record: dict) -> dict:
        """Store a new record, queued, in the index by its creation time."""
        created = datetime.fromisoformat(record["created_at"]).timestamp()

        def write():
            pipe = self.redis.pipeline()
            pipe.hset(
                self.key(record["id"]),
                mapping={"record": json.dumps(record), "status": JobStatus.QUEUED, "cancel": "0"},
            )
            pipe.zadd(self.INDEX_KEY, {record["id"]: created})
            pipe.execute()

        self._guard(write)
        return record

    def get(self, job_id: str) -> dict:
        check_id(job_id, kind=self.KIND)
        raw = self._guard(lambda: self.redis.hget(self.key(job_id), "record"))
        if raw is None:
            raise NotFound(f"{self.KIND} {job_id!r} not found")
        return json.loads(raw)

    def list(self, *, status: str | None = None, limit: int = 1000) -> list[dict]:
        def read():
            ids = self.redis.zrevrange(self.INDEX_KEY, 0, limit - 1)
            pipe = self.redis.pipeline()
            for job_id in ids:
                pipe.hget(self.key(job_id), "record")
            return pipe.execute()

        records = [json.loads(raw) for raw in self._guard(read) if raw]
        return [record for record in records if status is None or record["status"] == status]

    def update(self, job_id: str, patch: dict, *, allowed_from: frozenset[str] | None = None) -> dict:
        """Apply `patch` atomically; with `allowed_from`, only while the status is one of those."""

        def attempt():
            with self.redis.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(self.key(job_id))
                        raw = pipe.hget(self.key(job_id), "record")
                        if raw is None:
                            raise NotFound(f"{self.KIND} {job_id!r} not found")
                        record = json.loads(raw)
                        if allowed_from is not None and record["status"] not in allowed_from:
                            raise Conflict(f"{self.KIND} {job_id!r} is {record['status']}")
                        record.update(patch)
                        pipe.multi()
                        pipe.hset(self.key(job_id), mapping={"record": json.dumps(record), "status": record["status"]})
                        pipe.execute()
                        return record
                    except redis.WatchError:
                        continue

        return self._guard(attempt)

    def request_cancel(self, job_id: str) -> dict:
        """A queued job is cancelled at once; a running one is flagged and stops at its next batch."""
        record = self.get(job_id)
        if record["status"] in FINAL_STATUSES:
            raise Conflict(f"{self.KIND} {job_id!r} is already {record['status']}")
        self.flag_cancel(job_id)
        try:
            return self.update(
                job_id,
                {"status": JobStatus.CANCELLED, "finished_at": now_iso(), "eta_seconds": None},
                allowed_from=frozenset({JobStatus.QUEUED}),
            )
        except Conflict:
            return self.get(job_id)

    def flag_cancel(self, job_id: str) -> None:
        """Ask the process running it to stop (it checks between steps)."""
        self._guard(lambda: self.redis.hset(self.key(job_id), "cancel", "1"))

    def cancel_requested(self, job_id: str) -> bool:
        return self._guard(lambda: self.redis.hget(self.key(job_id), "cancel")) == "1"

    def heartbeat(self, job_id: str, worker: str) -> None:
        self._guard(lambda: self.redis.hset(self.key(job_id), mapping={"heartbeat": time.time(), "worker": worker}))

    def release_heartbeat(self, job_id: str, worker: str) -> bool:
        """Forget the heartbeat `worker` wrote, once it is known dead, so the job can be run again at
        once; a heartbeat written since by another worker is kept. True if one was forgotten."""

        def attempt():
            with self.redis.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(self.key(job_id))
                        if pipe.hget(self.key(job_id), "worker") != worker:
                            pipe.unwatch()
                            return False
                        pipe.multi()
                        pipe.hdel(self.key(job_id), "heartbeat")
                        pipe.execute()
                        return True
                    except redis.WatchError:
                        continue

        return self._guard(attempt)

    def last_heartbeat(self, job_id: str) -> float | None:
        value = self._guard(lambda: self.redis.hget(self.key(job_id), "heartbeat"))
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
        self._guard(lambda: self.redis.delete(self.key(job_id)))
        self._guard(lambda: self.redis.zrem(self.INDEX_KEY, job_id))
