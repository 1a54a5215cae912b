"""The dataset store: one folder per uploaded dataset, `images/<class>/<file>` plus `dataset.json`."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from finetune.errors import Conflict, NotFound
from finetune.ids import check_id, new_id, now_iso
from finetune.ml.scan import scan_dataset
from finetune.stores.archive import ArchiveLimits, unpack_archive
from finetune.stores.location import Location
from finetune.stores.records import DatasetRecord, SkippedFile

RECORD_FILE = "dataset.json"
DELETING_FILE = ".deleting"
IMAGES = "images"


class DatasetStore:
    def __init__(self, url: str | Path, *, cache_dir: str | Path | None = None, limits: ArchiveLimits, max_pixels: int):
        self.location = Location(str(url))
        self.cache_dir = Path(cache_dir or tempfile.gettempdir()) / "datasets"
        self.limits, self.max_pixels = limits, max_pixels
        if self.location.is_local:
            Path(self.location.root).mkdir(parents=True, exist_ok=True)

    def create_from_archive(self, archive_path: str | Path, *, name: str | None = None) -> dict:
        """Unpack, scan and record an uploaded archive; on any refusal nothing is left behind."""
        dataset_id = new_id()
        with self.location.publishing(dataset_id, cache_dir=self.cache_dir, record_file=RECORD_FILE) as staging:
            unpack_archive(archive_path, staging / IMAGES, limits=self.limits)
            scan = scan_dataset(staging / IMAGES, probe=True, max_pixels=self.max_pixels)
            record = DatasetRecord(
                id=dataset_id,
                name=name or dataset_id,
                classes=scan.classes,
                counts=scan.counts,
                num_images=len(scan.files),
                skipped=[SkippedFile(path=item.path, reason=item.reason) for item in scan.skipped],
                created_at=now_iso(),
            ).to_json()
            (staging / RECORD_FILE).write_text(json.dumps(record, indent=2))
        return record

    def remove_stale_staging(self, *, older_than_s: float) -> list[str]:
        """What uploads and deletions cut short by a dead process left behind."""
        return self.location.remove_stale_staging(self.cache_dir, older_than_s=older_than_s)

    def list(self) -> list[dict]:
        records = []
        for name in self.location.children():
            if name.startswith("."):
                continue
            try:
                records.append(self.get(name))
            except (NotFound, Conflict, ValueError, OSError):
                continue
        return sorted(records, key=lambda record: record["created_at"], reverse=True)

    def get(self, dataset_id: str) -> dict:
        check_id(dataset_id, kind="dataset")
        if self.location.exists(dataset_id, DELETING_FILE):
            raise Conflict(f"dataset {dataset_id!r} is being deleted")
        try:
            return json.loads(self.location.read_text(dataset_id, RECORD_FILE))
        except FileNotFoundError:
            raise NotFound(f"dataset {dataset_id!r} not found") from None
        except ValueError:  # a record cut short: never listed, so never served either
            raise NotFound(f"dataset {dataset_id!r} not found (its record is incomplete)") from None

    def delete(self, dataset_id: str) -> None:
        """Marks the dataset as being deleted (new jobs on it get 409), then removes it."""
        self.get(dataset_id)
        self.location.fs.pipe_file(self.location.path(dataset_id, DELETING_FILE), b"")
        self.location.remove_folder(
            dataset_id, record_file=RECORD_FILE, doomed_name=f".deleting-{dataset_id}-{new_id()}"
        )
        shutil.rmtree(self.cache_dir / dataset_id, ignore_errors=True)

    def images_url(self, dataset_id: str) -> str:
        """Where the dataset's images are, as a path or an object-store URL (for reading them in place)."""
        return self.location.url_of(dataset_id, IMAGES)

    def images_dir(self, dataset_id: str) -> Path:
        """A local folder of the dataset's images, copied into the local cache when the store is remote."""
        self.get(dataset_id)
        if self.location.is_local:
            return self.location.local_path(dataset_id, IMAGES)
        cached = self.cache_dir / dataset_id
        if not (cached / "complete").exists():
            shutil.rmtree(cached, ignore_errors=True)
            cached.mkdir(parents=True)
            self.location.fs.get(self.location.path(dataset_id, IMAGES) + "/", str(cached / IMAGES), recursive=True)
            (cached / "complete").touch()
        return cached / IMAGES

    def samples(self, dataset_id: str, *, per_class: int) -> list[dict]:
        record = self.get(dataset_id)
        skipped = {item["path"] for item in record["skipped"]}
        samples = []
        for label in record["classes"]:
            names = sorted(self.location.fs.ls(self.location.path(dataset_id, IMAGES, label), detail=False))
            files = [f"{label}/{PurePosixPath(name).name}" for name in names]
            samples.append({"label": label, "files": [f for f in files if f not in skipped][:per_class]})
        return samples

    def read_file(self, dataset_id: str, relative: str) -> bytes:
        """One image of the dataset, by its `<class>/<file>` path."""
        record = self.get(dataset_id)
        parts = PurePosixPath(relative).parts
        if len(parts) != 2 or parts[0] not in record["classes"] or parts[1].startswith("."):
            raise NotFound(f"file {relative!r} not found in dataset {dataset_id!r}")
        try:
            with self.location.fs.open(self.location.path(dataset_id, IMAGES, *parts), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise NotFound(f"file {relative!r} not found in dataset {dataset_id!r}") from None
