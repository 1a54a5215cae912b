"""Runs one batch prediction in this process: label every image of the batch, chunk by chunk, writing
each chunk's results part whole and reporting progress to Redis.

The worker starts one such process per batch (`python -m finetune.execution.batch_runner BATCH_ID`), as
for jobs: TensorFlow never runs in a forked child, and a crash cannot take the worker down.

Resume: the parts already written are skipped, so a batch taken over after its worker died restarts
at its first unwritten chunk, not from zero. Throughput: the images of the next chunk are read and
decoded on a pool of threads while the current chunk's forward pass runs (TensorFlow releases the
GIL), and the forward pass runs in batches of BATCH_FORWARD_SIZE. An image that cannot be read or
decoded gets a row carrying its error; it never fails the batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from finetune.execution.protocol import BATCH_RUNNER_MODULE, OWNED, exit_now, process_main, worker_id
from finetune.execution.runner import Heartbeat, _claim
from finetune.ids import now_iso
from finetune.ml.predictor import ImageInput, Predictor
from finetune.ml.thresholds import decide
from finetune.settings import Settings, get_settings
from finetune.states import FINAL_STATUSES, JobStatus
from finetune.stores.archive import ArchiveLimits
from finetune.stores.batches import BatchFiles, BatchFileStore, BatchStore
from finetune.stores.location import Location
from finetune.stores.models import ModelStore

log = logging.getLogger("finetune.execution.batch_runner")


def batch_store(settings: Settings) -> BatchStore:
    return BatchStore.from_url(settings.redis_url)


def batch_file_store(settings: Settings) -> BatchFileStore:
    return BatchFileStore(
        settings.batch_store_url, cache_dir=settings.cache_dir, limits=ArchiveLimits.from_settings(settings)
    )


# --- the final status: one call site ---------------------------------------------------------------


def finish_batch(
    batches: BatchStore, batch_id: str, status: str, *, allowed_from: frozenset[str] | None = None, **patch
) -> dict:
    """THE one place a batch reaches a final status (the runner's outcomes, and a cancel of a queued
    batch by the API): the record is written, then `on_final_status` is told."""
    record = batches.update(
        batch_id,
        {"status": status, "finished_at": now_iso(), "eta_seconds": None, **patch},
        allowed_from=allowed_from,
    )
    on_final_status(record)
    return record


def on_final_status(record: dict) -> None:
    """Called once per batch that reached a final status, with its final record. Its webhook (if it has
    a `webhook_url`) was queued by the store's update in the same transaction as the status."""
    log.info("batch %s ended %s (%s of %s images)", record["id"], record["status"], *_done_total(record))


def _done_total(record: dict) -> tuple[int, int]:
    return record["counts"]["done"], record["counts"]["total"]


# --- labelling --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelOptions:
    top_k: int
    threshold: float | None
    thresholds: dict[str, float | None]
    max_pixels: int


class ChunkLabeller:
    """Turns chunks of image paths into result rows: reads and decodes on `threads` threads, one chunk
    ahead of the forward pass."""

    def __init__(self, predictor: Predictor, source: Location, options: LabelOptions, *, threads: int):
        self.predictor, self.source, self.options, self.threads = predictor, source, options, threads

    def labelled(self, chunks: list[tuple[int, list[str]]]) -> Iterator[tuple[int, list[dict]]]:
        """(chunk, rows) for each chunk in order; the next chunk decodes while this one is labelled."""
        with ThreadPoolExecutor(self.threads, thread_name_prefix="decode") as pool:
            pending = None
            for chunk, paths in chunks:
                submitted = (chunk, paths, [pool.submit(self.decode, path) for path in paths])
                if pending is not None:
                    yield pending[0], self.label(*pending[1:])
                pending = submitted
            if pending is not None:
                yield pending[0], self.label(*pending[1:])

    def decode(self, path: str) -> np.ndarray | dict:
        """The image's pixels, or the error it got (`{type, message}`): any exception here is about this
        one file (unreadable, not an image, corrupt, too many pixels) and is recorded on its row."""
        try:
            data = self.source.fs.cat_file(self.source.path(path))
            return self.predictor.load_pixels(ImageInput(name=path, data=data), max_pixels=self.options.max_pixels)
        except Exception as error:
            return {"type": type(error).__name__, "message": str(getattr(error, "message", error))}

    def label(self, paths: list[str], decoded: list[Future]) -> list[dict]:
        """The chunk's rows, one forward pass (BATCH_FORWARD_SIZE images) at a time: each pass waits only
        for its own images, so the first starts once its images are decoded, not the whole chunk's (the
        whole chunk's wait and stacking were 14% of a batch's time, bench.batches)."""
        rows: list[dict] = []
        size = self.predictor.max_batch
        for start in range(0, len(paths), size):
            rows += self._label_pass(paths[start : start + size], [f.result() for f in decoded[start : start + size]])
        return rows

    def _label_pass(self, paths: list[str], outcomes: list[np.ndarray | dict]) -> list[dict]:
        good = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, np.ndarray)]
        rows: list[dict] = [
            {"path": path, "label": None, "abstained": False, "predictions": [], "error": outcome}
            for path, outcome in zip(paths, outcomes)
        ]
        if not good:
            return rows
        probabilities = self.predictor.predict_pixels(np.stack([outcomes[i] for i in good]))
        classes = self.predictor.classes
        labels = decide(probabilities, classes, self.options.thresholds, override=self.options.threshold)
        for i, label, top in zip(good, labels, self.predictor.top_k(probabilities, self.options.top_k)):
            rows[i] |= {"label": label, "abstained": label is None, "predictions": top, "error": None}
        return rows


# --- one batch ---------------------------------------------------------------------------------------


def run_batch(batch_id: str, *, settings: Settings, worker: str | None = None) -> str:
    """Run `batch_id` to a final state (resuming at its first unwritten chunk) and return that status;
    OWNED without doing anything when another live worker runs it (a duplicate delivery).
    An unexpected exception marks the batch failed with its type and message, then propagates."""
    worker = worker or worker_id()
    batches = batch_store(settings)
    refused = _refusal(batches, batch_id, settings)
    if refused is not None:
        return refused
    record = _claim(batches, batch_id, worker)
    heartbeat = Heartbeat(batches, batch_id, worker, settings.heartbeat_s)
    heartbeat.start()
    try:
        return _label_all(batches, batch_file_store(settings), record, settings)
    finally:
        heartbeat.stopped.set()


def _refusal(batches: BatchStore, batch_id: str, settings: Settings) -> str | None:
    """The status to answer without labelling: final already, owned by a live worker, cancelled while
    its worker was dead, or out of attempts. None when this process should run it."""
    record = batches.get(batch_id)
    if record["status"] in FINAL_STATUSES:
        return record["status"]
    beat = batches.last_heartbeat(batch_id)
    if record["status"] == JobStatus.RUNNING and beat and time.time() - beat < settings.job_stale_after_s:
        return OWNED
    if batches.cancel_requested(batch_id):
        return finish_batch(batches, batch_id, JobStatus.CANCELLED)["status"]
    if record["attempts"] + 1 > settings.job_max_attempts:
        message = f"the batch's worker stopped {record['attempts']} times before it finished; giving up"
        return finish_batch(batches, batch_id, JobStatus.FAILED, error={"type": "WorkerLost", "message": message})[
            "status"
        ]
    return None


def load_predictor(settings: Settings, model_id: str) -> Predictor:
    models = ModelStore(settings.model_dir, cache_dir=settings.cache_dir)
    predictor = Predictor(models.model_file(model_id), models.get(model_id), max_batch=settings.batch_forward_size)
    predictor.warm_up()
    return predictor


class ProgressCounter:
    """The record's counts, progress, rate and ETA as chunks are written; starts from the parts already
    written (recounted from the files, which may be ahead of a record its dead worker never updated)."""

    def __init__(self, record: dict, done_rows: list[list[dict]]):
        self.counts = dict(record["counts"])
        self.counts["chunks_done"] = len(done_rows)
        self.counts["done"] = sum(len(rows) for rows in done_rows)
        self.counts["errors"] = sum(1 for rows in done_rows for row in rows if row["error"])
        self.started, self.labelled_here = time.monotonic(), 0

    def add(self, rows: list[dict]) -> dict:
        self.counts["chunks_done"] += 1
        self.counts["done"] += len(rows)
        self.counts["errors"] += sum(1 for row in rows if row["error"])
        self.labelled_here += len(rows)
        return self.patch()

    def patch(self) -> dict:
        total, done = self.counts["total"], self.counts["done"]
        elapsed = time.monotonic() - self.started
        rate = self.labelled_here / elapsed if self.labelled_here and elapsed > 0 else None
        return {
            "counts": dict(self.counts),
            "progress": done / total if total else 1.0,
            "images_per_second": rate,
            "eta_seconds": (total - done) / rate if rate else None,
        }


def _label_all(batches: BatchStore, files: BatchFileStore, record: dict, settings: Settings) -> str:
    """Label every chunk not written yet; record the outcome: succeeded, cancelled, or failed with the error."""
    batch_id = record["id"]
    running = frozenset({JobStatus.RUNNING})
    try:
        inputs = files.files(batch_id)
        written = files.done_chunks(batch_id)
        todo = [(chunk, inputs.chunk(chunk, record["chunk_size"])) for chunk in _remaining(record, written)]
        labeller = _labeller(record, inputs, settings) if todo else None  # the model loaded before the clock starts
        counter = ProgressCounter(record, [files.read_part(batch_id, chunk) for chunk in written])
        batches.update(
            batch_id, counter.patch() | {"resumed_at_chunk": todo[0][0] if todo else None}, allowed_from=running
        )
        if labeller is not None:
            for chunk, rows in labeller.labelled(todo):
                if batches.cancel_requested(batch_id):
                    return finish_batch(batches, batch_id, JobStatus.CANCELLED)["status"]
                files.write_part(batch_id, chunk, rows)
                batches.update(batch_id, counter.add(rows), allowed_from=running)
    except Exception as error:
        finish_batch(batches, batch_id, JobStatus.FAILED, error={"type": type(error).__name__, "message": str(error)})
        raise
    return finish_batch(batches, batch_id, JobStatus.SUCCEEDED, progress=1.0)["status"]


def _remaining(record: dict, written: list[int]) -> list[int]:
    done = set(written)
    return [chunk for chunk in range(record["counts"]["chunks"]) if chunk not in done]


def _labeller(record: dict, inputs: BatchFiles, settings: Settings) -> ChunkLabeller:
    predictor = load_predictor(settings, record["model_id"])
    options = LabelOptions(
        top_k=record["top_k"],
        threshold=record["threshold"],
        thresholds={**predictor.thresholds, **(record["thresholds"] or {})},
        max_pixels=settings.max_image_pixels,
    )
    return ChunkLabeller(predictor, Location(inputs.root), options, threads=settings.batch_decode_threads)


def main(argv: list[str] | None = None) -> int:
    return process_main(
        argv,
        module=BATCH_RUNNER_MODULE,
        kind="batch",
        run=lambda record_id: run_batch(record_id, settings=get_settings()),
    )


if __name__ == "__main__":
    exit_now(main())
