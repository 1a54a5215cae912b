"""The Celery app: `celery -A worker.celery_app worker --pool=solo --concurrency=1`."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_init, worker_ready, worker_shutting_down

from finetune.execution.protocol import JOB_QUEUE
from finetune.settings import get_settings


def make_celery() -> Celery:
    settings = get_settings()
    broker = settings.redis_url or "redis://127.0.0.1:6379/0"
    app = Celery("finetune", broker=broker, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="solo",
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_default_queue=JOB_QUEUE,
    )
    return app


app = make_celery()


@worker_init.connect
def _claim_a_gpu(sender=None, **_):
    from worker.gpu import pin_one_gpu

    app.finetune_gpu_lock = pin_one_gpu(get_settings().gpu_lock_dir)


@worker_ready.connect
def _start_reaper(sender=None, **_):
    from finetune.execution.reaper import start_reaper
    from worker.tasks import run_batch, run_job

    sender.app.finetune_reaper = start_reaper(
        get_settings(),
        enqueue=lambda job_id: run_job.delay(job_id),
        enqueue_batch=lambda batch_id: run_batch.delay(batch_id),
    )


@worker_shutting_down.connect
def _stop_reaper(**_):
    reaper = getattr(app, "finetune_reaper", None)
    if reaper is not None:
        reaper.stopped.set()
