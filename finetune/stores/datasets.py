"""The dataset store: one folder per uploaded dataset (or version of one), `images/<class>/<file>`
(or `images/<split>/<class>/<file>` for given splits) plus `dataset.json`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from finetune.errors import BadDataset, Conflict, NotFound
from finetune.ids import check_id, new_id, now_iso
from finetune.ml.scan import SPLITS, TRAIN, DatasetScan, has_given_splits, scan_dataset
from finetune.stores.archive import ArchiveLimits, unpack_archive
from finetune.stores.location import Location
from finetune.stores.records import DatasetRecord, SkippedFile
from finetune.stores.versions import VersionEdits, VersionPlan, plan_additions, plan_edits

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
            record = _record(dataset_id, name or dataset_id, scan)
            (staging / RECORD_FILE).write_text(json.dumps(record, indent=2))
        return record

    def create_version(
        self,
        parent_id: str,
        *,
        archive_path: str | Path | None = None,
        edits: VersionEdits | None = None,
        name: str | None = None,
    ) -> dict:
        """A new dataset from `parent_id`'s files plus an archive's images, or with `edits` (moves,
        removals) applied. The parent is never written to. Files the version shares with its parent
        are stored once: hard links locally; in an object store, the store's own server-side copy
        (fsspec `copy`), so no image travels through this machine twice."""
        parent = self.get(parent_id)
        parent_files = self._files(parent_id)
        dataset_id = new_id()
        with self.location.publishing(dataset_id, cache_dir=self.cache_dir, record_file=RECORD_FILE) as staging:
            images = staging / IMAGES
            if archive_path is not None:
                plan = self._unpack_additions(archive_path, parent, parent_files, images)
            else:
                plan = plan_edits(parent_files, edits or VersionEdits())
            source = self.images_dir(parent_id)
            for child, original in plan.kept.items():
                (images / child).parent.mkdir(parents=True, exist_ok=True)
                os.link(source / original, images / child)
            scan = scan_dataset(images, probe=True, max_pixels=self.max_pixels)
            if (scan.splits is None) != (parent.get("splits") is None):
                raise BadDataset("a version keeps its parent's layout (given splits or one folder per class)")
            if not self.location.is_local:
                self._copy_shared_in_store(parent_id, dataset_id, plan, images)
            record = _record(dataset_id, name or parent["name"], scan, parent_id=parent_id, change=plan.change)
            (staging / RECORD_FILE).write_text(json.dumps(record, indent=2))
        return record

    def _unpack_additions(
        self, archive_path: str | Path, parent: dict, parent_files: set[str], images: Path
    ) -> VersionPlan:
        """Unpack the added images straight into the version's folder; refuse one the parent has."""
        given_splits = parent.get("splits") is not None
        unpack_archive(archive_path, images, limits=self.limits, partial_splits=given_splits)
        added = {path.relative_to(images).as_posix() for path in images.rglob("*") if path.is_file()}
        split_layout = all(len(parts := PurePosixPath(path).parts) == 3 and parts[0] in SPLITS for path in added)
        if given_splits and not split_layout:
            raise BadDataset(
                "the dataset has given splits: add images as <split>/<class>/<image> (e.g. train/cats/1.jpg)"
            )
        if not given_splits and has_given_splits(images):
            raise BadDataset("the dataset has one folder per class: add images as <class>/<image>")
        return plan_additions(parent_files, added)

    def _copy_shared_in_store(self, parent_id: str, dataset_id: str, plan: VersionPlan, images: Path) -> None:
        """Object store: the shared files copied inside the store (not uploaded again from `images`)."""
        for child, original in plan.kept.items():
            (images / child).unlink()
            self.location.fs.copy(
                self.location.path(parent_id, IMAGES, original), self.location.path(dataset_id, IMAGES, child)
            )

    def _files(self, dataset_id: str) -> set[str]:
        """Every file of the dataset, as a path relative to its images folder."""
        root = self.location.path(dataset_id, IMAGES).rstrip("/") + "/"
        return {path[len(root) :] for path in self.location.fs.find(root) if path.startswith(root)}

    def children(self, dataset_id: str) -> list[str]:
        """The ids of the versions made from `dataset_id`, oldest first."""
        self.get(dataset_id)
        return [record["id"] for record in reversed(self.list()) if record.get("parent_id") == dataset_id]

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
        """A few files per class (of the train split, for given splits)."""
        record = self.get(dataset_id)
        skipped = {item["path"] for item in record["skipped"]}
        prefix = (TRAIN,) if record.get("splits") else ()
        samples = []
        for label in record["classes"]:
            folder = "/".join((*prefix, label))
            names = sorted(self.location.fs.ls(self.location.path(dataset_id, IMAGES, folder), detail=False))
            files = [f"{folder}/{PurePosixPath(name).name}" for name in names]
            samples.append({"label": label, "files": [f for f in files if f not in skipped][:per_class]})
        return samples

    def read_file(self, dataset_id: str, relative: str) -> bytes:
        """One image of the dataset, by its `<class>/<file>` (or `<split>/<class>/<file>`) path."""
        record = self.get(dataset_id)
        parts = PurePosixPath(relative).parts
        splits = record.get("splits") or {}
        if splits and parts and parts[0] in splits:
            parts_in_class = parts[1:]
        else:
            parts_in_class = () if splits else parts
        if len(parts_in_class) != 2 or parts_in_class[0] not in record["classes"] or parts_in_class[1].startswith("."):
            raise NotFound(f"file {relative!r} not found in dataset {dataset_id!r}")
        try:
            with self.location.fs.open(self.location.path(dataset_id, IMAGES, *parts), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise NotFound(f"file {relative!r} not found in dataset {dataset_id!r}") from None


def _record(dataset_id: str, name: str, scan: DatasetScan, **version) -> dict:
    return DatasetRecord(
        id=dataset_id,
        name=name,
        classes=scan.classes,
        counts=scan.counts,
        num_images=len(scan.files),
        skipped=[SkippedFile(path=item.path, reason=item.reason) for item in scan.skipped],
        created_at=now_iso(),
        splits=scan.split_counts,
        **version,
    ).to_json()
