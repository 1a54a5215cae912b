"""Sending jobs to the workers. The API is a Celery client only: it never imports the worker."""

from __future__ import annotations

from celery import Celery

from finetune.execution.protocol import BUILD_EXPORT_TASK, JOB_QUEUE, RUN_BATCH_TASK, RUN_JOB_TASK


def make_enqueue(redis_url: str, task: str = RUN_JOB_TASK):
    """Sends `task(record_id)` (a job by default; RUN_BATCH_TASK for a batch) to the workers' queue."""
    client = Celery("finetune-api", broker=redis_url)
    client.conf.update(
        broker_connection_timeout=3, broker_connection_retry=False, broker_transport_options={"max_retries": 1}
    )

    def enqueue(job_id: str) -> None:
        client.send_task(
            task,
            args=[job_id],
            queue=JOB_QUEUE,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )

    return enqueue


def make_enqueue_batch(redis_url: str):
    """Sends `RUN_BATCH_TASK(batch_id)` to the workers' queue."""
    return make_enqueue(redis_url, RUN_BATCH_TASK)


def make_enqueue_export(redis_url: str):
    """Sends `BUILD_EXPORT_TASK(model_id, format, build_id)` to the workers' queue."""
    client = Celery("finetune-api-exports", broker=redis_url)
    client.conf.update(
        broker_connection_timeout=3, broker_connection_retry=False, broker_transport_options={"max_retries": 1}
    )

    def enqueue_export(model_id: str, fmt: str, build_id: str) -> None:
        client.send_task(
            BUILD_EXPORT_TASK,
            args=[model_id, fmt, build_id],
            queue=JOB_QUEUE,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )

    return enqueue_export
