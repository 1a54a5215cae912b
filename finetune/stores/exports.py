"""Export records and files, kept with their model: `<model>/exports/<format>/`.

    <model>/exports/<format>/export.json            the record (status, error, parity): rewritten atomically
    <model>/exports/<format>/<file>                 the artifact (ARTIFACT_FILES), uploaded before the record
    <model>/exports/<format>/cancel-<build id>      a cancel request for one build (its presence is the flag)

Every API and worker host reads the same folder (a local path or `s3://` through Location), so there is no
export state in Redis, and deleting the model's folder deletes its exports. A build's succeeded record is
written only after its file is in place; the model's `manifest.json` then gets the export's figures in
its `exports` section (read, patched, rewritten atomically).

Writes are last-writer-wins, not compare-and-set: the API writes a record when an export is requested
and when a queued one is cancelled; the worker when it claims, finishes or cancels a build. A cancel
always leaves its marker first, and the worker checks for it before every write, so a cancel that
races the worker's claim still ends the build `cancelled`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from finetune.errors import Conflict, NotFound
from finetune.ids import now_iso
from finetune.ml.export import ARTIFACT_FILES, check_format
from finetune.states import ACTIVE_STATUSES, FINAL_STATUSES, JobStatus
from finetune.stores.models import MANIFEST_FILE, ModelStore
from finetune.stores.records import ExportRecord

EXPORTS = "exports"
RECORD_FILE = "export.json"


class ExportStore:
    def __init__(self, models: ModelStore):
        self.models = models
        self.location = models.location

    def _parts(self, model_id: str, fmt: str, *rest: str) -> tuple[str, ...]:
        return (model_id, EXPORTS, fmt, *rest)

    def _known_format(self, fmt: str) -> str:
        try:
            return check_format(fmt)
        except ValueError as error:
            raise NotFound(str(error)) from None

    # --- records ----------------------------------------------------------------------------

    def get(self, model_id: str, fmt: str) -> dict:
        self.models.get(model_id)
        self._known_format(fmt)
        try:
            return json.loads(self.location.read_text(*self._parts(model_id, fmt, RECORD_FILE)))
        except FileNotFoundError:
            raise NotFound(f"model {model_id!r} has no {fmt} export") from None
        except ValueError:
            raise NotFound(f"model {model_id!r} has no {fmt} export (its record is incomplete)") from None

    def list(self, model_id: str) -> list[dict]:
        self.models.get(model_id)
        records = []
        for fmt in ARTIFACT_FILES:
            try:
                records.append(json.loads(self.location.read_text(*self._parts(model_id, fmt, RECORD_FILE))))
            except (FileNotFoundError, ValueError):
                continue
        return records

    def write(self, record: dict) -> dict:
        """Store `record` (validated) atomically; NotFound when its model has been deleted meanwhile."""
        record = ExportRecord.model_validate(record).to_json()
        model_id, fmt = record["model_id"], record["format"]
        if not self.location.exists(model_id, MANIFEST_FILE):
            raise NotFound(f"model {model_id!r} not found")
        if self.location.is_local:
            self.location.local_path(*self._parts(model_id, fmt)).mkdir(parents=True, exist_ok=True)
        self.location.write_text_atomic(json.dumps(record, indent=2), *self._parts(model_id, fmt, RECORD_FILE))
        return record

    def create(self, model_id: str, fmt: str, *, rebuild: bool = False) -> dict:
        """A queued record for a new build. 409 while one of this format is queued or running, and for
        a succeeded one unless `rebuild` (failed and cancelled ones are rebuilt without asking)."""
        self.models.get(model_id)
        self._known_format(fmt)
        try:
            current = self.get(model_id, fmt)
        except NotFound:
            current = None
        if current is not None and current["status"] in ACTIVE_STATUSES:
            raise Conflict(f"the {fmt} export of model {model_id!r} is already {current['status']}")
        if current is not None and current["status"] == JobStatus.SUCCEEDED and not rebuild:
            raise Conflict(f"the {fmt} export of model {model_id!r} is already built; ask with rebuild=true")
        return self.write(ExportRecord.new(model_id, fmt).to_json())

    def finish(self, record: dict, status: str, **patch) -> dict:
        return self.write({**record, "status": status, "finished_at": now_iso(), **patch})

    # --- cancellation -----------------------------------------------------------------------

    def request_cancel(self, model_id: str, fmt: str) -> dict:
        """A queued build is cancelled at once; a running one when its worker next looks (within a second)."""
        record = self.get(model_id, fmt)
        if record["status"] in FINAL_STATUSES:
            raise Conflict(f"the {fmt} export of model {model_id!r} is already {record['status']}")
        self.location.fs.pipe_file(self.location.path(*self._parts(model_id, fmt, f"cancel-{record['id']}")), b"")
        if record["status"] == JobStatus.QUEUED:
            return self.finish(record, JobStatus.CANCELLED)
        return record

    def cancel_requested(self, model_id: str, fmt: str, build_id: str) -> bool:
        return self.location.exists(*self._parts(model_id, fmt, f"cancel-{build_id}"))

    # --- files ------------------------------------------------------------------------------

    def publish_artifact(self, model_id: str, fmt: str, local_file: Path) -> None:
        """Put the built file in place (locally by rename, so a download never sees half of it)."""
        name = ARTIFACT_FILES[fmt]
        if not self.location.exists(model_id, MANIFEST_FILE):
            raise NotFound(f"model {model_id!r} not found")
        if self.location.is_local:
            target = self.location.local_path(*self._parts(model_id, fmt, name))
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{name}.part-{os.getpid()}")
            shutil.copyfile(local_file, partial)
            os.replace(partial, target)
        else:
            self.location.fs.put_file(str(local_file), self.location.path(*self._parts(model_id, fmt, name)))
        shutil.rmtree(self.models.cache_dir / model_id / EXPORTS / fmt, ignore_errors=True)

    def artifact_file(self, model_id: str, fmt: str) -> tuple[Path, dict]:
        """A local path of a succeeded export's file (downloaded into the cache when the store is remote)
        and its record; 409 while it is not built."""
        record = self.get(model_id, fmt)
        if record["status"] != JobStatus.SUCCEEDED:
            raise Conflict(f"the {fmt} export of model {model_id!r} is {record['status']}, not succeeded")
        name = ARTIFACT_FILES[fmt]
        if self.location.is_local:
            return self.location.local_path(*self._parts(model_id, fmt, name)), record
        cached = self.models.cache_dir / model_id / EXPORTS / fmt / f"{record['id']}-{name}"
        if not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f"{cached.name}.part-{os.getpid()}")
            self.location.fs.get_file(self.location.path(*self._parts(model_id, fmt, name)), str(partial))
            os.replace(partial, cached)
        return cached, record

    def remove_leftovers(self, model_id: str) -> None:
        """What a build that outlived its model wrote after the model was deleted."""
        if self.location.exists(model_id, MANIFEST_FILE):
            return
        try:
            self.location.fs.rm(self.location.path(model_id), recursive=True)
        except FileNotFoundError:
            pass

    # --- the model's manifest ---------------------------------------------------------------

    def record_in_manifest(self, record: dict) -> None:
        """The export's outcome in the model's `manifest.json` (`exports.<format>`), rewritten atomically."""
        model_id = record["model_id"]
        manifest = self.models.get(model_id)
        keep = ("id", "status", "finished_at", "file", "size_bytes", "unpacked_bytes", "build_seconds")
        keep += ("parity", "flagged", "flag_reason", "input")
        manifest.setdefault("exports", {})[record["format"]] = {key: record.get(key) for key in keep}
        self.location.write_text_atomic(json.dumps(manifest, indent=2), model_id, MANIFEST_FILE)
