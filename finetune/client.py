"""A Python client of the REST API (DESIGN.md), on httpx, typed with the API's own schemas: the records the
stores keep (finetune/stores/records.py, which the API's `*Public` schemas are) and the other response
shapes (finetune/schemas.py). It imports neither the web app nor TensorFlow, so a script that only calls
the service starts in a fraction of a second.

    with Client("http://127.0.0.1:8000", api_key=...) as api:
        dataset = api.upload_dataset("photos/")          # a folder is zipped here
        job = api.create_job(dataset.id, backbone="mobilenet", alpha=0.25)
        for state in api.watch(job.id):                  # server-sent events until a final state
            print(state.status, state.phase, f"{state.progress:.0%}")
        job = api.wait(job.id)                           # raises JobFailed unless it succeeded
        print(api.predict(["cat.jpg"], model=job.model_id).results[0].label)

Every answer other than a 2xx raises `ApiError` (a subclass per status: `NotFound`, `Conflict`, ...),
carrying `status_code` and the server's `detail`. Transport failures stay httpx's own exceptions."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from httpx_sse import EventSource
from pydantic import BaseModel

from finetune.schemas import ListPublic, ModelSummary, PredictResponse
from finetune.states import FINAL_STATUSES, JobStatus
from finetune.stores.records import AliasRecord, BatchRecord, DatasetRecord, ExportRecord, JobRecord, ModelManifest

DEFAULT_URL = "http://127.0.0.1:8000"
# connect fast or fail; reads wait long: a first /predict may load a model, an upload is unpacked and scanned
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
# the events route sends a keep-alive comment every 15 s of quiet: four missed ones mean the stream is dead
EVENTS_READ_TIMEOUT_S = 60.0
Progress = Callable[[int, int], None]
"""Called with (bytes sent so far, total bytes) as an upload goes out."""
PathLike = str | os.PathLike
ImageFile = PathLike | tuple[str, bytes]
"""An image to send: a path, or (file name, its bytes)."""

R = TypeVar("R", bound=BaseModel)


# --- errors ------------------------------------------------------------------------------------------


class ApiError(Exception):
    """The API answered with an error status: `status_code`, and `detail` as the API gave it (a string, or
    for a request that did not validate, FastAPI's list of what was wrong)."""

    status_code: int = 0

    def __init__(self, status_code: int, detail: Any, response: httpx.Response | None = None):
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code, self.detail, self.response = status_code, detail, response


class BadRequest(ApiError):
    status_code = 400


class Unauthorized(ApiError):
    status_code = 401


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class TooLarge(ApiError):
    status_code = 413


class UnsupportedMedia(ApiError):
    status_code = 415


class Invalid(ApiError):
    status_code = 422


class Unavailable(ApiError):
    status_code = 503


ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    cls.status_code: cls
    for cls in (BadRequest, Unauthorized, NotFound, Conflict, TooLarge, UnsupportedMedia, Invalid, Unavailable)
}


class JobFailed(Exception):
    """`wait` saw the job end other than `succeeded` (failed, or cancelled): the final `job` is attached."""

    def __init__(self, job: JobRecord):
        reason = f": {job.error.type}: {job.error.message}" if job.error else ""
        super().__init__(f"job {job.id} {job.status}{reason}")
        self.job = job


def raise_for_status(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    raise ERRORS_BY_STATUS.get(response.status_code, ApiError)(response.status_code, detail, response)


# --- uploads -----------------------------------------------------------------------------------------


class ProgressReader(io.RawIOBase):
    """A file as httpx reads it into the request body, calling `progress(sent, total)` at every chunk.
    httpx reads a file part in 64 KiB chunks as it writes them to the socket, so the count follows the
    bytes sent (one chunk ahead at most); it restarts at 0 if httpx rewinds the file to send it again."""

    def __init__(self, file: IO[bytes], total: int, progress: Progress | None):
        super().__init__()
        self.file, self.total, self.progress, self.sent = file, total, progress, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self.file.read(size)
        if chunk:
            self.sent += len(chunk)
            if self.progress is not None:
                self.progress(self.sent, self.total)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self.file.seek(offset, whence)
        self.sent = position
        return position

    def tell(self) -> int:
        return self.file.tell()


def zip_folder(folder: Path, destination: Path) -> Path:
    """`folder`'s files as a zip of their paths relative to it (`<class>/<image>` for a dataset).
    Stored, not deflated: on the 3-class animals-mini photos (1.99 MB of JPEGs) deflate saved 1.4%
    of the bytes for 3x the time (0.19 s against 0.06 s), as images are compressed already."""
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, path.relative_to(folder).as_posix())
    return destination


@contextmanager
def archive_of(path: PathLike) -> Iterator[Path]:
    """An archive file as it is, or a folder zipped into a temporary file removed afterwards."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_dir():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="finetune-upload-") as scratch:
        yield zip_folder(path, Path(scratch) / f"{path.resolve().name or 'upload'}.zip")


@contextmanager
def archive_part(path: PathLike, progress: Progress | None) -> Iterator[tuple[str, ProgressReader, str]]:
    """The multipart `file` part of an archive or folder, counting the bytes sent."""
    with archive_of(path) as archive, open(archive, "rb") as file:
        reader = ProgressReader(file, archive.stat().st_size, progress)
        yield archive.name, reader, "application/octet-stream"


def image_part(item: ImageFile) -> tuple[str, tuple[str, bytes, str]]:
    name, data = (Path(item).name, Path(item).read_bytes()) if isinstance(item, str | os.PathLike) else item
    return "file", (name, data, "application/octet-stream")


def save_stream(response: httpx.Response, destination: PathLike) -> Path:
    """A streamed download written to a temporary name beside `destination`, renamed into place when whole."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(prefix=f".{destination.name}.", dir=destination.parent, delete=False)
    try:
        with handle:
            for chunk in response.iter_bytes():
                handle.write(chunk)
        os.replace(handle.name, destination)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return destination


# --- the client --------------------------------------------------------------------------------------


class Client:
    """The service at `base_url`. Use it as a context manager (or call `close()`) to free its connections."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        events_read_timeout: float = EVENTS_READ_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ):
        self.events_read_timeout = events_read_timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # plumbing

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        return raise_for_status(self.http.request(method, path, **kwargs))

    def _one(self, model: type[R], method: str, path: str, **kwargs) -> R:
        return model.model_validate(self._request(method, path, **kwargs).json())

    def _list(self, model: type[R], path: str, **params) -> list[R]:
        query = {key: value for key, value in params.items() if value is not None}
        return ListPublic[model].model_validate(self._request("GET", path, params=query).json()).data

    @contextmanager
    def _stream(self, method: str, path: str, **kwargs) -> Iterator[httpx.Response]:
        with self.http.stream(method, path, **kwargs) as response:
            if not response.is_success:
                response.read()
                raise_for_status(response)
            yield response

    # health

    def health(self) -> dict:
        return self._request("GET", "/healthz").json()

    def ready(self) -> bool:
        """Whether the API reaches its broker (`GET /readyz`)."""
        return self.http.get("/readyz").status_code == 200

    # datasets

    def upload_dataset(
        self, path: PathLike, *, name: str | None = None, progress: Progress | None = None
    ) -> DatasetRecord:
        """Upload a .zip/.tar/.tar.gz of `<class>/<image>` folders, or such a folder (zipped here first).
        `progress(sent, total)` follows the archive's bytes as they go out, ending at the total."""
        form = {"name": name} if name else {}
        with archive_part(path, progress) as part:
            return self._one(DatasetRecord, "POST", "/datasets", data=form, files={"file": part})

    def datasets(self) -> list[DatasetRecord]:
        return self._list(DatasetRecord, "/datasets")

    def dataset(self, dataset_id: str) -> DatasetRecord:
        return self._one(DatasetRecord, "GET", f"/datasets/{dataset_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/datasets/{dataset_id}")

    # jobs

    def create_job(self, dataset_id: str, spec: Mapping[str, Any] | BaseModel | None = None, **fields) -> JobRecord:
        """Start a job on the dataset: `spec` (a mapping, or a `TrainingSpec`) with `fields` over it, e.g.
        `create_job(id, backbone="mobilenet", warmup={"epochs": 5}, webhook_url=...)`. The server validates it (`Invalid`, 422)."""
        if isinstance(spec, BaseModel):
            spec = spec.model_dump(mode="json", exclude_unset=True)
        body = {**(spec or {}), **fields, "dataset_id": dataset_id}
        return self._one(JobRecord, "POST", "/jobs", json=body)

    def job(self, job_id: str) -> JobRecord:
        return self._one(JobRecord, "GET", f"/jobs/{job_id}")

    def jobs(self, status: JobStatus | str | None = None) -> list[JobRecord]:
        return self._list(JobRecord, "/jobs", status=status)

    def cancel_job(self, job_id: str) -> JobRecord:
        return self._one(JobRecord, "POST", f"/jobs/{job_id}/cancel")

    def watch(self, job_id: str, *, timeout: float | None = None) -> Iterator[JobRecord]:
        """The job at each change, from its state now to its final one, as the server sends them
        (`GET /jobs/{id}/events`). A stream that ends or goes quiet before a final state is opened again
        (the server starts each stream with the job as it is; a state already yielded is not repeated).
        `timeout`: seconds after which `TimeoutError` is raised if the job has not ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: JobRecord | None = None
        while True:
            read_timeout = self.events_read_timeout
            if deadline is not None:
                read_timeout = max(0.1, min(read_timeout, deadline - time.monotonic()))
            try:
                for job in self._job_events(job_id, read_timeout):
                    if job != last:
                        last = job
                        yield job
                    if job.status in FINAL_STATUSES:
                        return
            except httpx.ReadTimeout:
                pass  # quiet past the keep-alives, or the deadline: check it, else open the stream again
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} did not end within {timeout:g} s (last: {last and last.status})")

    def _job_events(self, job_id: str, read_timeout: float) -> Iterator[JobRecord]:
        timeout = httpx.Timeout(self.http.timeout.connect, read=read_timeout, write=None, pool=None)
        headers = {"Accept": "text/event-stream"}
        with self._stream("GET", f"/jobs/{job_id}/events", timeout=timeout, headers=headers) as response:
            for event in EventSource(response).iter_sse():
                if event.event == "job":
                    yield JobRecord.model_validate_json(event.data)

    def wait(self, job_id: str, *, timeout: float | None = None) -> JobRecord:
        """The job once final; `JobFailed` (the job attached) unless it succeeded, `TimeoutError` after `timeout` s."""
        seen = deque(self.watch(job_id, timeout=timeout), maxlen=1)  # the stream's last state: a final one
        job = seen[0] if seen else self.job(job_id)
        if job.status != JobStatus.SUCCEEDED:
            raise JobFailed(job)
        return job

    # prediction

    def predict(
        self,
        files: ImageFile | Iterable[ImageFile],
        *,
        model: str | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
    ) -> PredictResponse:
        """The top-k labels of each image. `model`: a model id or an alias (default: the alias `default`,
        else the newest model); `threshold`: abstain below this top-1 probability."""
        one = isinstance(files, str | os.PathLike) or (isinstance(files, tuple) and isinstance(files[-1], bytes))
        items = [files] if one else list(files)
        form = {"model_id": model, "top_k": top_k, "threshold": threshold}
        form = {key: str(value) for key, value in form.items() if value is not None}
        parts = [image_part(item) for item in items]
        return self._one(PredictResponse, "POST", "/predict", data=form, files=parts)

    # models

    def models(self) -> list[ModelSummary]:
        return self._list(ModelSummary, "/models")

    def model(self, model_id: str) -> ModelManifest:
        return self._one(ModelManifest, "GET", f"/models/{model_id}")

    def delete_model(self, model_id: str, *, force: bool = False) -> None:
        self._request("DELETE", f"/models/{model_id}", params={"force": str(force).lower()})

    def download_model(self, model_id: str, destination: PathLike) -> Path:
        """The saved Keras model file, written to `destination`."""
        with self._stream("GET", f"/models/{model_id}/download") as response:
            return save_stream(response, destination)

    # aliases

    def aliases(self) -> list[AliasRecord]:
        return self._list(AliasRecord, "/aliases")

    def alias(self, name: str) -> AliasRecord:
        return self._one(AliasRecord, "GET", f"/aliases/{name}")

    def set_alias(self, name: str, model_id: str) -> AliasRecord:
        """Point the alias at a model (or at what another alias names); created if new."""
        return self._one(AliasRecord, "PUT", f"/aliases/{name}", json={"model_id": model_id})

    def rollback_alias(self, name: str) -> AliasRecord:
        return self._one(AliasRecord, "POST", f"/aliases/{name}/rollback")

    def delete_alias(self, name: str) -> None:
        self._request("DELETE", f"/aliases/{name}")

    # exports

    def create_export(self, model_id: str, format: str, *, rebuild: bool = False) -> ExportRecord:
        """Queue an export (savedmodel, litert, litert_int8, onnx) of the model for a worker to build."""
        body = {"format": format, "rebuild": rebuild}
        return self._one(ExportRecord, "POST", f"/models/{model_id}/exports", json=body)

    def exports(self, model_id: str) -> list[ExportRecord]:
        return self._list(ExportRecord, f"/models/{model_id}/exports")

    def export(self, model_id: str, format: str) -> ExportRecord:
        return self._one(ExportRecord, "GET", f"/models/{model_id}/exports/{format}")

    def cancel_export(self, model_id: str, format: str) -> ExportRecord:
        return self._one(ExportRecord, "POST", f"/models/{model_id}/exports/{format}/cancel")

    def download_export(self, model_id: str, format: str, destination: PathLike) -> Path:
        """A built export's file (a SavedModel as a .tar.gz), written to `destination`; `Conflict` if not built."""
        with self._stream("GET", f"/models/{model_id}/exports/{format}/download") as response:
            return save_stream(response, destination)

    # batches

    def create_batch(
        self,
        *,
        archive: PathLike | None = None,
        dataset_id: str | None = None,
        source: str | None = None,
        model: str | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        progress: Progress | None = None,
        **fields,
    ) -> BatchRecord:
        """Queue a batch prediction over exactly one of: an `archive` of images (or a folder, zipped here;
        `progress` as in `upload_dataset`), an uploaded dataset, or a `source` such as `s3://bucket/prefix`.
        `model`: a model id or alias (default as `predict`). Other `fields` (e.g. `webhook_url`) go as they are."""
        if sum(given is not None for given in (archive, dataset_id, source)) != 1:
            raise ValueError("give exactly one of archive, dataset_id and source")
        options = {"model_id": model, "top_k": top_k, "threshold": threshold, **fields}
        options = {key: value for key, value in options.items() if value is not None}
        if archive is None:
            where = {"dataset_id": dataset_id} if dataset_id is not None else {"source": source}
            return self._one(BatchRecord, "POST", "/batches", json={**where, **options})
        form = {key: value if isinstance(value, str) else json.dumps(value) for key, value in options.items()}
        with archive_part(archive, progress) as part:
            return self._one(BatchRecord, "POST", "/batches", data=form, files={"file": part})

    def batch(self, batch_id: str) -> BatchRecord:
        return self._one(BatchRecord, "GET", f"/batches/{batch_id}")

    def batches(self, status: str | None = None) -> list[BatchRecord]:
        return self._list(BatchRecord, "/batches", status=status)

    def cancel_batch(self, batch_id: str) -> BatchRecord:
        return self._one(BatchRecord, "POST", f"/batches/{batch_id}/cancel")

    def wait_batch(self, batch_id: str, *, timeout: float | None = None, interval: float = 1.0) -> BatchRecord:
        """The batch once final (succeeded, failed or cancelled: its results hold the rows done either way),
        polled every `interval` s; `TimeoutError` after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (batch := self.batch(batch_id)).status not in FINAL_STATUSES:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"batch {batch_id} did not end within {timeout:g} s (last: {batch.status})")
            time.sleep(interval)
        return batch

    def batch_results(self, batch_id: str) -> Iterator[dict]:
        """The batch's result rows (JSON Lines, read as they arrive): one per image, `Conflict` before it ends."""
        with self._stream("GET", f"/batches/{batch_id}/results", params={"format": "jsonl"}) as response:
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def batch_results_csv(self, batch_id: str) -> list[dict[str, str]]:
        """The same rows from `?format=csv`, as the CSV's header names them."""
        text = self._request("GET", f"/batches/{batch_id}/results", params={"format": "csv"}).text
        return list(csv.DictReader(io.StringIO(text)))

    def download_batch_results(self, batch_id: str, destination: PathLike, *, format: str = "jsonl") -> Path:
        with self._stream("GET", f"/batches/{batch_id}/results", params={"format": format}) as response:
            return save_stream(response, destination)
