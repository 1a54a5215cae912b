"""Batch predictions: their records in Redis (like jobs: a cancel and a worker's start cannot both win,
a heartbeat the reaper watches) and their files in the batch store (BATCH_DIR, local or s3://):

    <batch>/files.json                 the images to label, fixed at creation: {root, files}
    <batch>/inputs/...                 an uploaded archive's files, at their paths in it
    <batch>/results/part-00012.jsonl   one JSON line per image of chunk 12, written whole (temporary
                                       name, then rename), so a part that exists is complete

The list of files is fixed when the batch is made, so chunk `i` always holds the same images: a
worker that takes over a batch skips the parts already written and labels only the rest."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from finetune.errors import InvalidSpec, NotFound, TooLarge
from finetune.ids import check_id, new_id, now_iso
from finetune.states import JobStatus
from finetune.stores.archive import ArchiveLimits, unpack_archive
from finetune.stores.jobs import JobStore
from finetune.stores.location import Location
from finetune.stores.records import BatchCounts, BatchRecord, BatchSource

FILES_FILE = "files.json"
INPUTS = "inputs"
RESULTS = "results"
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})


def part_name(chunk: int) -> str:
    """The results file of chunk `chunk`: `part-00012.jsonl`."""
    return f"part-{chunk:05d}.jsonl"


def chunk_of(name: str) -> int | None:
    """The chunk number of a results file's name; None for anything else (e.g. a temporary file)."""
    if not (name.startswith("part-") and name.endswith(".jsonl")):
        return None
    digits = name[len("part-") : -len(".jsonl")]
    return int(digits) if digits.isdigit() else None


class BatchStore(JobStore):
    """Batch records in Redis: a hash per batch and an index by creation time, as jobs are kept."""

    KIND = "batch"
    KEY_PREFIX = "finetune:batch:"
    INDEX_KEY = "finetune:batches"

    def create_record(
        self, batch_id: str, *, model_id: str, source: BatchSource, total: int, chunk_size: int, **options
    ) -> dict:
        record = BatchRecord(
            id=batch_id,
            status=JobStatus.QUEUED,
            model_id=model_id,
            source=source,
            chunk_size=chunk_size,
            counts=BatchCounts(total=total, chunks=-(-total // chunk_size)),
            created_at=now_iso(),
            **options,
        )
        return self.insert(record.to_json())


@dataclass(frozen=True)
class BatchFiles:
    """The images of one batch: where they are read from and their paths, in chunk order."""

    root: str
    files: list[str]

    def chunk(self, index: int, size: int) -> list[str]:
        return self.files[index * size : (index + 1) * size]


class BatchFileStore:
    """The batch store's folders: inputs fixed at creation, results written part by part."""

    def __init__(self, url: str | Path, *, cache_dir: str | Path, limits: ArchiveLimits):
        self.location = Location(str(url))
        self.cache_dir = Path(cache_dir) / "batches"
        self.limits = limits  # folders are made on first write: an API that makes no batch leaves no trace

    # --- inputs -------------------------------------------------------------------------------

    def create_from_archive(self, archive_path: str | Path) -> tuple[str, BatchFiles]:
        """A new batch folder holding the archive's files at their paths (unpacked as safely as a
        dataset's); BadArchive/TooLarge as for a dataset, and then nothing is left behind."""
        batch_id = new_id()
        root = self.location.url_of(batch_id, INPUTS)
        with self.location.publishing(batch_id, cache_dir=self.cache_dir, record_file=FILES_FILE) as staging:
            unpack_archive(archive_path, staging / INPUTS, limits=self.limits, layout="any")
            files = BatchFiles(root=root, files=_local_files(staging / INPUTS))
            (staging / FILES_FILE).write_text(json.dumps({"root": files.root, "files": files.files}))
        return batch_id, files

    def create_from_location(self, url: str) -> tuple[str, BatchFiles]:
        """A new batch over the files found under `url` now (a dataset's images, an s3:// prefix)."""
        files = self.list_files(url)
        batch_id = new_id()
        self.location.write_text_atomic(json.dumps({"root": files.root, "files": files.files}), batch_id, FILES_FILE)
        return batch_id, files

    def list_files(self, url: str) -> BatchFiles:
        """Every file under `url` (hidden ones and system clutter left out), sorted; NotFound when none."""
        source = Location(url)
        root = source.root.rstrip("/")
        try:
            found = source.fs.find(root)
        except FileNotFoundError:
            found = []
        except Exception as error:  # no credentials, access denied, an unreachable endpoint: the caller's to fix
            raise InvalidSpec(f"cannot list {url}: {type(error).__name__}: {error}") from error
        relative = sorted(
            name
            for name in (str(path)[len(root) + 1 :] for path in found if str(path).startswith(root + "/"))
            if name and not _is_ignored(name)
        )
        if not relative:
            raise NotFound(f"no files found under {url}")
        if len(relative) > self.limits.max_files:
            raise TooLarge(f"{len(relative)} files under {url}; a batch takes at most {self.limits.max_files}")
        return BatchFiles(root=source.url_of(), files=relative)

    def files(self, batch_id: str) -> BatchFiles:
        check_id(batch_id, kind="batch")
        try:
            listing = json.loads(self.location.read_text(batch_id, FILES_FILE))
        except FileNotFoundError:
            raise NotFound(f"batch {batch_id!r} has no inputs") from None
        return BatchFiles(root=listing["root"], files=listing["files"])

    # --- results ------------------------------------------------------------------------------

    def write_part(self, batch_id: str, chunk: int, rows: list[dict]) -> None:
        """One chunk's rows, whole: a part that exists is complete."""
        text = "".join(json.dumps(row) + "\n" for row in rows)
        self.location.write_text_atomic(text, batch_id, RESULTS, part_name(chunk))

    def done_chunks(self, batch_id: str) -> list[int]:
        """The chunks whose results part is written, in order."""
        folder = self.location.path(batch_id, RESULTS)
        try:
            names = [PurePosixPath(path).name for path in self.location.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(chunk for chunk in map(chunk_of, names) if chunk is not None)

    def read_part(self, batch_id: str, chunk: int) -> list[dict]:
        return [json.loads(line) for line in self.location.read_text(batch_id, RESULTS, part_name(chunk)).splitlines()]

    def rows(self, batch_id: str) -> Iterator[dict]:
        """Every written row, chunk by chunk (so in the order of the batch's files)."""
        for chunk in self.done_chunks(batch_id):
            yield from self.read_part(batch_id, chunk)

    def remove(self, batch_id: str) -> None:
        """The batch's folder (its inputs and results); a missing one is not an error."""
        check_id(batch_id, kind="batch")
        if self.location.is_local:
            shutil.rmtree(self.location.local_path(batch_id), ignore_errors=True)
        elif self.location.exists(batch_id):
            self.location.fs.rm(self.location.path(batch_id), recursive=True)


def _is_ignored(relative: str) -> bool:
    parts = relative.split("/")
    return parts[-1].lower() in IGNORED_NAMES or any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _local_files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder).as_posix()) for path in folder.rglob("*") if path.is_file())
