"""The service layer: what the REST edge calls. Combines the stores; knows nothing of HTTP or Celery."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from finetune.errors import BrokerUnavailable, Conflict, InvalidSpec, NotFound
from finetune.execution.batch_runner import batch_file_store, finish_batch
from finetune.execution.webhooks import check_webhook_url
from finetune.ml.spec import JobSpec, unknown_weighted_classes, warm_start_mismatches
from finetune.ml.thresholds import measure_thresholds, pick_thresholds
from finetune.serving.batcher import BatchObserver
from finetune.serving.cache import BatchingOptions, PredictorCache, ServedModel
from finetune.serving.changes import SharedChangeCounter
from finetune.settings import Settings
from finetune.states import ACTIVE_STATUSES, FINAL_STATUSES, JobStatus
from finetune.stores.archive import ArchiveLimits
from finetune.stores.batches import BatchFiles, BatchFileStore, BatchStore
from finetune.stores.datasets import DatasetStore
from finetune.stores.exports import ExportStore
from finetune.stores.jobs import JobStore
from finetune.stores.models import MANIFEST_FILE, ModelStore
from finetune.stores.records import BatchSource

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
    batches: BatchStore | None = None
    batch_files: BatchFileStore | None = None
    enqueue_batch: Enqueue | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        enqueue: Enqueue,
        on_batch: BatchObserver | None = None,
        enqueue_export: EnqueueExport | None = None,
        enqueue_batch: Enqueue | None = None,
    ) -> Service:
        """The stores and the serving cache from `settings`; `on_batch` observes every forward pass of /predict."""
        batching = BatchingOptions(
            max_batch=settings.predict_max_batch,
            max_wait_s=settings.predict_max_wait_ms / 1000,
            concurrency=settings.predict_concurrency,
            on_batch=on_batch,
        )
        models = ModelStore(settings.model_dir, cache_dir=settings.cache_dir)
        jobs = JobStore.from_url(settings.redis_url)
        return cls(
            settings=settings,
            datasets=DatasetStore(
                settings.data_dir,
                cache_dir=settings.cache_dir,
                limits=ArchiveLimits.from_settings(settings),
                max_pixels=settings.max_image_pixels,
            ),
            models=models,
            jobs=jobs,
            predictors=PredictorCache(
                models,
                size=settings.model_cache_size,
                batching=batching,
                changes=SharedChangeCounter(settings.api_changes_file) if settings.api_changes_file else None,
            ),
            enqueue=enqueue,
            exports=ExportStore(models),
            enqueue_export=enqueue_export,
            batches=BatchStore(jobs.redis),
            batch_files=batch_file_store(settings),
            enqueue_batch=enqueue_batch,
        )

    def delete_dataset(self, dataset_id: str) -> None:
        self.datasets.get(dataset_id)
        active = self.jobs.jobs_on_dataset(dataset_id)
        if active:
            raise Conflict(f"dataset {dataset_id!r} is in use by job(s) {', '.join(job['id'] for job in active)}")
        self.datasets.delete(dataset_id)

    def create_job(self, spec: JobSpec) -> dict:
        dataset = self.datasets.get(spec.dataset_id)
        _check_splits_fit(spec, dataset)
        self._check_job_fits(spec, dataset)
        if spec.webhook_url is not None:
            check_webhook_url(self.settings, spec.webhook_url)
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

    def _check_job_fits(self, spec: JobSpec, dataset: dict) -> None:
        """422 for a class_weight naming classes the dataset lacks, or an init model whose weights cannot
        start this spec; 404 for an init model that does not exist."""
        unknown = unknown_weighted_classes(spec, dataset["classes"])
        if unknown:
            raise InvalidSpec(f"class_weight names classes dataset {spec.dataset_id!r} lacks: {', '.join(unknown)}")
        if spec.init_model_id is not None:
            mismatches = warm_start_mismatches(spec, self.models.resolve(spec.init_model_id))
            if mismatches:
                raise InvalidSpec(
                    f"init_model_id {spec.init_model_id!r} does not fit the spec: {'; '.join(mismatches)}"
                )

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

    def delete_model(self, model_id: str, *, force: bool = False) -> None:
        """Delete a model; 409 while aliases point to it, unless `force` (then those aliases go too)."""
        self.models.get(model_id)
        aliases = self.models.aliases.pointing_to(model_id)
        if aliases and not force:
            raise Conflict(
                f"model {model_id!r} is the target of alias(es) {', '.join(aliases)}: move or delete them first, "
                "or delete with ?force=true"
            )
        for name in aliases:
            self.models.aliases.delete(name)
        self.models.delete(model_id)
        self.predictors.evict(model_id)

    def set_thresholds(
        self, model_id: str, *, target_precision: float | None = None, values: dict[str, float | None] | None = None
    ) -> dict:
        """Per-class thresholds from a target precision or explicit values, measured on the model's
        held-out predictions and stored in its manifest; the served model follows within a second."""
        manifest = self.models.get(model_id)
        classes = manifest["classes"]
        unknown = sorted(set(values or {}) - set(classes))
        if unknown:
            raise InvalidSpec(f"unknown class(es) {', '.join(unknown)}; the model's classes are {', '.join(classes)}")
        rows = self.models.held_out(model_id)
        labels = np.array([classes.index(row["true"]) for row in rows], dtype=np.int64)
        probabilities = np.array([row["probabilities"] for row in rows], dtype=np.float64).reshape(
            len(rows), len(classes)
        )
        if target_precision is not None:
            per_class = pick_thresholds(labels, probabilities, classes, target_precision=target_precision)
        else:
            per_class = measure_thresholds(labels, probabilities, classes, values or {})
        thresholds = {"target_precision": target_precision, "per_class": per_class}
        changes: dict = {"thresholds": thresholds}
        if manifest.get("figure_splits"):  # measured on the held-out rows: the split of `metrics`
            changes["figure_splits"] = {**manifest["figure_splits"], "thresholds": manifest["metrics_split"]}
        self.models.update_manifest(model_id, changes)
        self.predictors.changed()
        return thresholds

    def evaluation_samples(
        self, model_id: str, *, true: str | None, predicted: str | None, limit: int, offset: int
    ) -> tuple[list[dict], int]:
        """The held-out images of one confusion-matrix cell (or row, or column), most confident first,
        each with the URL of its file in the dataset; and how many there are in all."""
        manifest = self.models.get(model_id)
        rows = [
            row
            for row in self.models.held_out(model_id)
            if (true is None or row["true"] == true) and (predicted is None or row["predicted"] == predicted)
        ]
        rows.sort(key=lambda row: row["probability"], reverse=True)
        dataset = manifest.get("dataset_id")
        for row in rows:
            row["url"] = f"/datasets/{dataset}/files/{quote(row['file'])}" if dataset and row.get("file") else None
        return rows[offset : offset + limit], len(rows)

    def explain(self, ref: str, image, *, class_name: str | None, max_pixels: int) -> tuple[bytes, str, float]:
        """A Grad-CAM overlay of `image` (an ImageInput) by the model `ref` names."""
        predictor = self.model_for_prediction(ref).predictor
        pixels = predictor.load_pixels(image, max_pixels=max_pixels)
        return predictor.explain(pixels, class_name)

    def set_alias(self, name: str, ref: str) -> dict:
        """Point alias `name` at the model `ref` names (a model id or another alias)."""
        if self.models.location.exists(name, MANIFEST_FILE):
            raise Conflict(f"{name!r} is a model id; an alias must not shadow a model")
        alias = self.models.aliases.set(name, self.models.resolve(ref)["id"])
        self.predictors.changed()
        return alias

    def rollback_alias(self, name: str) -> dict:
        """Point alias `name` back at its previous model."""
        alias = self.models.aliases.rollback(name)
        self.predictors.changed()
        return alias

    def delete_alias(self, name: str) -> None:
        self.models.aliases.delete(name)
        self.predictors.changed()

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

    # --- batch predictions (issue 16) -------------------------------------------------------------

    def resolve_model(self, ref: str | None) -> dict:
        """The manifest of the model `ref` names, as /predict resolves it (None: the alias `default`, else
        the newest model); 409 when `ref` names a job that has not produced its model yet."""
        try:
            return self.models.resolve(ref)
        except NotFound:
            if ref:
                self._refuse_unfinished_job(ref)
            raise

    def create_batch(
        self,
        *,
        archive: Path | None = None,
        archive_name: str | None = None,
        dataset_id: str | None = None,
        source: str | None = None,
        model_id: str | None = None,
        thresholds: dict[str, float] | None = None,
        chunk_size: int | None = None,
        **options,
    ) -> dict:
        """A queued batch over exactly one of an uploaded archive, a dataset or an object-store URL, sent
        to the workers; `options`: top_k, threshold, webhook_url. The model is resolved now, so the
        record names the concrete model whatever an alias does later."""
        if options.get("webhook_url") is not None:
            check_webhook_url(self.settings, options["webhook_url"])
        manifest = self.resolve_model(model_id)
        unknown = sorted(set(thresholds or {}) - set(manifest["classes"]))
        if unknown:
            raise InvalidSpec(
                f"unknown class(es) {', '.join(unknown)}; the model's classes are {', '.join(manifest['classes'])}"
            )
        batch_id, files, batch_source = self._batch_inputs(archive, archive_name, dataset_id, source)
        try:
            record = self.batches.create_record(
                batch_id,
                model_id=manifest["id"],
                model_ref=model_id,
                source=batch_source,
                total=len(files.files),
                chunk_size=chunk_size or self.settings.batch_chunk_size,
                thresholds=thresholds,
                **options,
            )
        except Exception:
            self.batch_files.remove(batch_id)
            raise
        try:
            if self.enqueue_batch is None:
                raise RuntimeError("this service has no batch queue")
            self.enqueue_batch(batch_id)
        except Exception as error:
            error_record = {"type": type(error).__name__, "message": f"could not enqueue the batch: {error}"}
            finish_batch(self.batches, batch_id, JobStatus.FAILED, error=error_record)
            raise BrokerUnavailable(f"the job queue is unreachable: {error}") from error
        return record

    def _batch_inputs(
        self, archive: Path | None, archive_name: str | None, dataset_id: str | None, source: str | None
    ) -> tuple[str, BatchFiles, BatchSource]:
        if archive is not None:
            batch_id, files = self.batch_files.create_from_archive(archive)
            return batch_id, files, BatchSource(kind="archive", name=archive_name)
        if dataset_id is not None:
            self.datasets.get(dataset_id)
            batch_id, files = self.batch_files.create_from_location(self.datasets.images_url(dataset_id))
            return batch_id, files, BatchSource(kind="dataset", dataset_id=dataset_id)
        batch_id, files = self.batch_files.create_from_location(source)
        return batch_id, files, BatchSource(kind="url", url=source)

    def cancel_batch(self, batch_id: str) -> dict:
        """A queued batch is cancelled at once; a running one is flagged and stops before its next part."""
        record = self.batches.get(batch_id)
        if record["status"] in FINAL_STATUSES:
            raise Conflict(f"batch {batch_id!r} is already {record['status']}")
        self.batches.flag_cancel(batch_id)
        try:
            return finish_batch(self.batches, batch_id, JobStatus.CANCELLED, allowed_from=frozenset({JobStatus.QUEUED}))
        except Conflict:
            return self.batches.get(batch_id)

    def batch_results(self, batch_id: str) -> tuple[dict, Iterator[dict]]:
        """The batch's record and its rows, one per image, in the order of its files: once it is final (a
        cancelled or failed batch gives the rows of the parts written before it stopped); 409 while it runs."""
        record = self.batches.get(batch_id)
        if record["status"] not in FINAL_STATUSES:
            raise Conflict(f"batch {batch_id!r} is {record['status']}: its results are served once it ends")
        return record, self.batch_files.rows(batch_id)


def _check_splits_fit(spec: JobSpec, dataset: dict) -> None:
    """422 for a `test_split` on a dataset of given splits (its own test folder, or none, is the answer)."""
    if spec.test_split is not None and dataset.get("splits"):
        raise InvalidSpec(
            f"test_split: dataset {spec.dataset_id!r} has its own splits ({', '.join(dataset['splits'])}); "
            "test_split splits a flat dataset"
        )
