"""Builds one export of a model in this process: `python -m finetune.execution.exporter MODEL FORMAT BUILD`.

The worker starts one such process per export (as it does per job), so the conversion's TensorFlow,
tf2onnx and LiteRT converter never run in the worker (or the API) and give their memory back when
done; the worker kills it when the export is cancelled. Its record says how it went (stores/exports.py).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from finetune.errors import NotFound
from finetune.execution.protocol import EXIT_DONE, worker_id
from finetune.ids import now_iso
from finetune.settings import Settings, get_settings
from finetune.states import FINAL_STATUSES, JobStatus
from finetune.stores.archive import ArchiveLimits
from finetune.stores.datasets import DatasetStore
from finetune.stores.exports import ExportStore
from finetune.stores.models import ModelStore

log = logging.getLogger("finetune.execution.exporter")
SUPERSEDED = "superseded"  # the record now belongs to a newer build: this one does nothing


def export_store(settings: Settings) -> ExportStore:
    return ExportStore(ModelStore(settings.model_dir, cache_dir=settings.cache_dir))


def _dataset_dir(settings: Settings, manifest: dict) -> tuple[Path | None, str | None]:
    """The model's dataset as a local folder, or None and why not."""
    dataset_id = manifest.get("dataset_id")
    if not dataset_id:
        return None, "the model's manifest names no dataset (trained outside the service?)"
    datasets = DatasetStore(
        settings.data_dir,
        cache_dir=settings.cache_dir,
        limits=ArchiveLimits.from_settings(settings),
        max_pixels=settings.max_image_pixels,
    )
    try:
        return datasets.images_dir(dataset_id), None
    except Exception as error:
        return None, f"the model's dataset {dataset_id!r} is unavailable ({error}): parity cannot be measured"


def run_export(model_id: str, fmt: str, build_id: str, *, settings: Settings) -> str:
    """Build the export to a final state and return it (or SUPERSEDED when a newer build owns the record)."""
    from finetune.ml.export import export_and_measure

    store = export_store(settings)
    try:
        record = store.get(model_id, fmt)
    except NotFound:
        return SUPERSEDED
    if record["id"] != build_id:
        return SUPERSEDED
    if record["status"] in FINAL_STATUSES:
        return record["status"]
    if store.cancel_requested(model_id, fmt, build_id):
        return store.finish(record, JobStatus.CANCELLED)["status"]
    record = store.write(
        {**record, "status": JobStatus.RUNNING, "started_at": now_iso(), "worker": worker_id(), "error": None}
    )
    try:
        import keras
        import tensorflow as tf

        manifest = store.models.get(model_id)
        dataset_dir, missing = _dataset_dir(settings, manifest)
        with tempfile.TemporaryDirectory(prefix=f"export-{model_id}-{fmt}-", dir=_scratch(settings)) as scratch:
            outcome = export_and_measure(
                store.models.model_file(model_id),
                manifest,
                fmt,
                Path(scratch),
                dataset_dir=dataset_dir,
                dataset_missing_reason=missing,
                max_pixels=settings.max_image_pixels,
            )
            if store.cancel_requested(model_id, fmt, build_id):
                return store.finish(record, JobStatus.CANCELLED)["status"]
            store.publish_artifact(model_id, fmt, outcome.artifact)
        record = store.finish(
            record,
            JobStatus.SUCCEEDED,
            file=outcome.artifact.name,
            size_bytes=outcome.size_bytes,
            unpacked_bytes=outcome.unpacked_bytes,
            build_seconds=outcome.build_seconds,
            input=outcome.input,
            parity=outcome.parity,
            flagged=outcome.flag_reason is not None,
            flag_reason=outcome.flag_reason,
            versions={"tensorflow": tf.__version__, "keras": keras.__version__, **_runtime_versions()},
        )
        store.record_in_manifest(record)
        return JobStatus.SUCCEEDED
    except NotFound:  # the model was deleted while its export was being built
        store.remove_leftovers(model_id)
        return JobStatus.CANCELLED
    except Exception as error:
        log.exception("export %s of model %s failed", fmt, model_id)
        try:
            store.finish(record, JobStatus.FAILED, error={"type": type(error).__name__, "message": str(error)[:2000]})
        except NotFound:
            store.remove_leftovers(model_id)
        return JobStatus.FAILED


def _scratch(settings: Settings) -> Path:
    path = settings.cache.root / "exports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _runtime_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 3:
        print("usage: python -m finetune.execution.exporter MODEL_ID FORMAT BUILD_ID", file=sys.stderr)
        return 2
    status = run_export(*args, settings=get_settings())
    log.info("export %s of model %s (build %s) ended %s", args[1], args[0], args[2], status)
    return EXIT_DONE


if __name__ == "__main__":
    exit_code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # skips TensorFlow's slow teardown: the export's state is already recorded
