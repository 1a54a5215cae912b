"""The job vocabulary, defined once: statuses and phases. The API publishes them as enums in
`/openapi.json`, from which the dashboard reads them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """`queued -> running -> succeeded | failed | cancelled`."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Phase(StrEnum):
    """Where a running job is: loading its data, one of the recipe's two phases, evaluating, saving."""

    LOADING = "loading"
    WARMUP = "warmup"
    FINETUNE = "finetune"
    EVALUATING = "evaluating"
    SAVING = "saving"


ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
TRAINING_PHASES = (Phase.WARMUP, Phase.FINETUNE)
