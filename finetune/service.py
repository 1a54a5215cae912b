"""The service layer: what the REST edge calls. Combines the stores; knows nothing of HTTP or Celery."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from finetune.errors import BrokerUnavailable, Conflict, NotFound
from finetune.ml.spec import JobSpec
from finetune.serving.batcher import BatchObserver
from finetune.serving.cache import BatchingOptions, PredictorCache, ServedModel
from finetune.settings import Settings
from finetune.states import ACTIVE_STATUSES, JobStatus
from finetune.stores.archive import ArchiveLimits
from finetune.stores.datasets import DatasetStore
from finetune.stores.exports import ExportStore
from finetune.stores.jobs import JobStore
from finetune.stores.models import ModelStore

Enqueue = Callable[[str], None]
EnqueueExport = Callable[[str, str, str], None]  # (model_id, format, build_id)


@dataclass
class Service:
    settings: Settings
    datasets: DatasetStore
    models: ModelStore
    jobs: JobStore
    predictors: PredictorCache
    enqueue: Enqueue
    exports: ExportStore | None = None
    enqueue_export: EnqueueExport | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        enqueue: Enqueue,
        on_batch: BatchObserver | None = None,
        enqueue_export: EnqueueExport | None = None,
    ) -> Service:
        """The stores and the serving cache from `settings`; `on_batch` observes every forward pass of /predict."""
        batching = BatchingOptions(
            max_batch=settings.predict_max_batch,
            max_wait_s=settings.predict_max_wait_ms / 1000,
            concurrency=settings.predict_concurrency,
            on_batch=on_batch,
        )
        models = ModelStore(settings.model_dir, cache_dir=settings.cache_dir)
        return cls(
            settings=settings,
            datasets=DatasetStore(
                settings.data_dir,
                cache_dir=settings.cache_dir,
                limits=ArchiveLimits.from_settings(settings),
                max_pixels=settings.max_image_pixels,
            ),
            models=models,
            jobs=JobStore.from_url(settings.redis_url),
            predictors=PredictorCache(models, size=settings.model_cache_size, batching=batching),
            enqueue=enqueue,
            exports=ExportStore(models),
            enqueue_export=enqueue_export,
        )

    def delete_dataset(self, dataset_id: str) -> None:
        self.datasets.get(dataset_id)
        active = self.jobs.jobs_on_dataset(dataset_id)
        if active:
            raise Conflict(f"dataset {dataset_id!r} is in use by job(s) {', '.join(job['id'] for job in active)}")
        self.datasets.delete(dataset_id)

    def create_job(self, spec: JobSpec) -> dict:
        self.datasets.get(spec.dataset_id)
        record = self.jobs.create(spec)
        try:
            self.enqueue(record["id"])
        except Exception as error:
            self.jobs.update(
                record["id"],
                {
                    "status": JobStatus.FAILED,
                    "error": {"type": type(error).__name__, "message": f"could not enqueue the job: {error}"},
                },
            )
            raise BrokerUnavailable(f"the job queue is unreachable: {error}") from error
        return record

    def loaded_model(self, model_id: str | None) -> ServedModel | None:
        """The served model from memory when recently confirmed (see PredictorCache.fresh), else None."""
        return self.predictors.fresh(model_id)

    def model_for_prediction(self, model_id: str | None) -> ServedModel:
        """The loaded model; 409 when `model_id` names a job that has not produced its model yet."""
        try:
            return self.predictors.get(model_id)
        except NotFound:
            if model_id:
                self._refuse_unfinished_job(model_id)
            raise

    def _refuse_unfinished_job(self, job_id: str) -> None:
        try:
            job = self.jobs.get(job_id)
        except (NotFound, BrokerUnavailable):
            return
        if job["status"] in ACTIVE_STATUSES:
            raise Conflict(f"job {job_id!r} is {job['status']}: its model is not ready yet")
        if job.get("model_id"):
            raise NotFound(f"model {job_id!r} not found; job {job_id!r} produced model {job['model_id']!r}")

    def delete_model(self, model_id: str) -> None:
        self.models.delete(model_id)
        self.predictors.evict(model_id)

    # --- exports (issue 13) ---------------------------------------------------------------------

    def create_export(self, model_id: str, fmt: str, *, rebuild: bool = False) -> dict:
        """A queued export record, sent to the workers; 409 when one of the format is queued or running
        (or succeeded, unless `rebuild`)."""
        record = self.exports.create(model_id, fmt, rebuild=rebuild)
        try:
            if self.enqueue_export is None:
                raise RuntimeError("this service has no export queue")
            self.enqueue_export(model_id, fmt, record["id"])
        except Exception as error:
            self.exports.finish(
                record,
                JobStatus.FAILED,
                error={"type": type(error).__name__, "message": f"could not enqueue the export: {error}"},
            )
            raise BrokerUnavailable(f"the job queue is unreachable: {error}") from error
        return record
