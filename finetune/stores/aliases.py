"""Aliases: stable names (`production`, `default`) that point to a model and can be moved and rolled back.

They live with the models, in `MODEL_DIR/.aliases/<name>.json` (the model listing skips dot-names),
one small record per alias written atomically (locally: temporary name, then rename; on an object
store: one whole-object put). So every API and worker host sharing MODEL_DIR sees the same aliases,
and losing Redis never changes what production serves. A host serializes its own changes (a lock per
process, and a file lock when the store is local); two hosts moving the same alias on an object store
at the same instant keep the last write.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
from collections.abc import Iterator
from pathlib import Path

from finetune.errors import Conflict, NotFound
from finetune.ids import ALIAS_NAME, now_iso
from finetune.stores.location import Location
from finetune.stores.records import AliasChange, AliasRecord, Publication

ALIASES_DIR = ".aliases"
DEFAULT_ALIAS = "default"  # what /predict answers with when no model is named
_LOCK_FILE = ".lock"


def check_alias_name(name: str) -> str:
    if not ALIAS_NAME.match(name):
        raise NotFound(f"alias {name!r} not found")
    return name


class AliasStore:
    def __init__(self, model_dir: str | Path):
        self.location = Location(f"{str(model_dir).rstrip('/')}/{ALIASES_DIR}")
        self._lock = threading.Lock()

    def list(self) -> list[dict]:
        names = [name.removesuffix(".json") for name in self.location.children() if name.endswith(".json")]
        records = (self.find(name) for name in names if ALIAS_NAME.match(name.removesuffix(".json")))
        return sorted((record for record in records if record is not None), key=lambda record: record["name"])

    def find(self, name: str) -> dict | None:
        """The alias record, or None when there is no alias of that name (or it is not a valid name)."""
        if not ALIAS_NAME.match(name):
            return None
        try:
            return json.loads(self.location.read_text(f"{name}.json"))
        except FileNotFoundError:
            return None

    def get(self, name: str) -> dict:
        record = self.find(check_alias_name(name))
        if record is None:
            raise NotFound(f"alias {name!r} not found")
        return record

    def pointing_to(self, model_id: str) -> list[str]:
        return [record["name"] for record in self.list() if record["model_id"] == model_id]

    def set(self, name: str, model_id: str) -> dict:
        """Point `name` at `model_id` (the caller checked that the model exists); a new alias starts its history."""
        with self._changing():
            current = self.find(name)
            if current is None:
                now = now_iso()
                record = AliasRecord(
                    name=name, model_id=model_id, updated_at=now, history=[AliasChange(model_id=model_id, from_=now)]
                )
            elif current["model_id"] == model_id:
                return current
            else:
                record = AliasRecord.model_validate(current).moved_to(model_id)
            return self._write(record)

    def rollback(self, name: str) -> dict:
        """Point `name` back at the model it pointed to before; 409 when it never pointed elsewhere."""
        with self._changing():
            record = AliasRecord.model_validate(self.get(name))
            previous = record.previous_model_id
            if previous is None:
                raise Conflict(f"alias {name!r} has no previous model to roll back to")
            return self._write(record.moved_to(previous))

    def delete(self, name: str) -> None:
        with self._changing():
            self.get(name)
            self.location.remove(f"{name}.json")

    def _write(self, record: AliasRecord) -> dict:
        data = record.to_json()
        self.location.write_text_atomic(json.dumps(data, indent=2), f"{record.name}.json")
        return data

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """One change at a time in this process, and on this host when the store is local."""
        with self._lock:
            if not self.location.is_local:
                yield
                return
            lock_path = self.location.local_path(_LOCK_FILE)
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            with open(lock_path, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)


def publish(aliases: AliasStore, manifest: dict, *, alias: str, min_accuracy: float) -> Publication:
    """A job's promotion gate: move `alias` to the model when its accuracy (on the split its final
    metrics come from) reaches `min_accuracy`; otherwise leave the alias where it is and say why."""
    accuracy = (manifest.get("metrics") or {}).get("accuracy")
    split = manifest.get("metrics_split", "validation")
    if accuracy is None:
        return Publication(
            alias=alias,
            published=False,
            reason="the model has no accuracy to check",
            min_accuracy=min_accuracy,
            split=split,
        )
    if accuracy < min_accuracy:
        return Publication(
            alias=alias,
            published=False,
            reason=f"accuracy {accuracy:.4g} < {min_accuracy:.4g}",
            accuracy=accuracy,
            min_accuracy=min_accuracy,
            split=split,
        )
    aliases.set(alias, manifest["id"])
    return Publication(alias=alias, published=True, accuracy=accuracy, min_accuracy=min_accuracy, split=split)
