"""The model store: one folder per model holding `model.keras` and `manifest.json`.

The store, not Redis, is the source of truth for models. A model is listed only once its
manifest exists: locally the folder is assembled under a temporary name and renamed into
place; in an object store the manifest is uploaded last.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from finetune.errors import NotFound
from finetune.ids import check_id, new_id, now_iso
from finetune.stores.aliases import DEFAULT_ALIAS, AliasStore
from finetune.stores.location import Location
from finetune.stores.records import ModelManifest, SkippedFile

MODEL_FILE = "model.keras"
MANIFEST_FILE = "manifest.json"
PREDICTIONS_FILE = "predictions.jsonl"


def build_manifest(
    result, *, model_id: str, job_id: str | None, dataset_id: str | None, init_model_id: str | None = None
) -> dict:
    import keras
    import tensorflow as tf

    return ModelManifest(
        id=model_id,
        created_at=now_iso(),
        job_id=job_id,
        dataset_id=dataset_id,
        spec=result.spec.model_dump(),
        classes=result.classes,
        image_size=result.spec.image_size,
        backbone=result.spec.backbone,
        alpha=result.spec.effective_alpha,
        metrics=result.metrics,
        warmup_metrics=result.warmup_metrics,
        history=result.history,
        timings=result.timings,
        num_train=result.num_train,
        num_validation=result.num_validation,
        num_test=getattr(result, "num_test", 0),
        metrics_split=getattr(result, "metrics_split", "validation"),
        validation_metrics=getattr(result, "validation_metrics", None),
        figure_splits=figure_splits(getattr(result, "metrics_split", "validation")),
        skipped=[SkippedFile(path=item.path, reason=item.reason) for item in result.skipped],
        model_file=MODEL_FILE,
        versions={"tensorflow": tf.__version__, "keras": keras.__version__},
        curves=getattr(result, "curves", None),
        thresholds=getattr(result, "thresholds", None),
        predictions_file=PREDICTIONS_FILE if getattr(result, "held_out", None) is not None else None,
        init_model_id=init_model_id,
    ).to_json()


def figure_splits(metrics_split: str) -> dict[str, str]:
    """Which split each of a manifest's figures is measured on: the held-out views follow `metrics`;
    thresholds, like every choice made while training, come from validation (the test stays untouched)."""
    return {
        "metrics": metrics_split,
        "curves": metrics_split,
        "predictions": metrics_split,
        "validation_metrics": "validation",
        "warmup_metrics": "validation",
        "thresholds": "validation",
    }


def held_out_lines(result) -> str:
    """`predictions.jsonl`: one held-out image a line, `{file, true, predicted, probability, probabilities}`
    (`probability`: of the predicted class), in the split's order."""
    held_out, classes = result.held_out, result.classes
    lines = []
    for index, (label, row) in enumerate(zip(held_out.labels, held_out.probabilities)):
        predicted = int(row.argmax())
        lines.append(
            json.dumps(
                {
                    "file": held_out.files[index] if held_out.files else None,
                    "true": classes[int(label)],
                    "predicted": classes[predicted],
                    "probability": float(row[predicted]),
                    "probabilities": [round(float(p), 6) for p in row],
                }
            )
        )
    return "\n".join(lines) + "\n"


class ModelStore:
    def __init__(self, url: str | Path, *, cache_dir: str | Path | None = None):
        self.location = Location(str(url))
        self.aliases = AliasStore(url)
        self.cache_dir = Path(cache_dir or tempfile.gettempdir()) / "models"
        if self.location.is_local:
            Path(self.location.root).mkdir(parents=True, exist_ok=True)

    def save(
        self,
        result,
        *,
        job_id: str | None = None,
        dataset_id: str | None = None,
        model_id: str | None = None,
        init_model_id: str | None = None,
    ) -> dict:
        model_id = model_id or new_id()
        manifest = build_manifest(
            result, model_id=model_id, job_id=job_id, dataset_id=dataset_id, init_model_id=init_model_id
        )
        with self.location.publishing(model_id, cache_dir=self.cache_dir, record_file=MANIFEST_FILE) as staging:
            result.model.save(staging / MODEL_FILE)
            if manifest["predictions_file"]:
                (staging / PREDICTIONS_FILE).write_text(held_out_lines(result))
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        return manifest

    def remove_stale_staging(self, *, older_than_s: float) -> list[str]:
        """What saves and deletions cut short by a dead process left behind."""
        return self.location.remove_stale_staging(self.cache_dir, older_than_s=older_than_s)

    def list(self) -> list[dict]:
        """Every complete model, newest first."""
        manifests = []
        for name in self.location.children():
            if name.startswith(".") or not self.location.exists(name, MANIFEST_FILE):
                continue
            try:
                manifests.append(json.loads(self.location.read_text(name, MANIFEST_FILE)))
            except (OSError, ValueError):
                continue
        return sorted(manifests, key=lambda manifest: manifest["created_at"], reverse=True)

    def get(self, model_id: str) -> dict:
        check_id(model_id, kind="model")
        try:
            return json.loads(self.location.read_text(model_id, MANIFEST_FILE))
        except FileNotFoundError:
            raise NotFound(f"model {model_id!r} not found") from None
        except ValueError:  # a record cut short: never listed, so never served either
            raise NotFound(f"model {model_id!r} not found (its record is incomplete)") from None

    def by_job(self) -> dict[str, dict]:
        """The manifest of each job's model, by job id (models uploaded or copied without a job left out)."""
        return {manifest["job_id"]: manifest for manifest in reversed(self.list()) if manifest.get("job_id")}

    def newest(self) -> dict:
        models = self.list()
        if not models:
            raise NotFound("no model has been trained yet")
        return models[0]

    def resolve(self, ref: str | None) -> dict:
        """The manifest of the model `ref` names: an alias name or a model id (an alias wins over an id
        of the same spelling). No `ref`: the model the alias `default` points to, else the newest model."""
        alias = self.aliases.find(ref or DEFAULT_ALIAS)
        if alias is not None:
            try:
                return self.get(alias["model_id"])
            except NotFound:
                raise NotFound(
                    f"alias {alias['name']!r} points to model {alias['model_id']!r}, which is gone"
                ) from None
        return self.get(ref) if ref else self.newest()

    def held_out(self, model_id: str) -> list[dict]:
        """The held-out images' rows of `predictions.jsonl`; NotFound for a model saved without them."""
        manifest = self.get(model_id)
        if not manifest.get("predictions_file"):
            raise NotFound(f"model {model_id!r} has no held-out predictions (saved without them)")
        text = self.location.read_text(model_id, manifest["predictions_file"])
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def update_manifest(self, model_id: str, changes: dict) -> dict:
        """Rewrite the manifest with `changes` applied (atomically: a reader sees the old or the new one)."""
        manifest = {**self.get(model_id), **changes}
        self.location.write_text_atomic(json.dumps(manifest, indent=2), model_id, MANIFEST_FILE)
        return manifest

    def model_file(self, model_id: str) -> Path:
        """A local path of the model file, downloaded into the cache when the store is remote."""
        self.get(model_id)
        if self.location.is_local:
            return self.location.local_path(model_id, MODEL_FILE)
        cached = self.cache_dir / model_id / MODEL_FILE
        if not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(f".part-{os.getpid()}")
            self.location.fs.get_file(self.location.path(model_id, MODEL_FILE), str(partial))
            os.replace(partial, cached)
        return cached

    def load(self, model_id: str):
        import keras

        return keras.models.load_model(self.model_file(model_id))

    def delete(self, model_id: str) -> None:
        self.get(model_id)
        self.location.remove_folder(model_id, record_file=MANIFEST_FILE, doomed_name=f".deleting-{model_id}-{new_id()}")
        shutil.rmtree(self.cache_dir / model_id, ignore_errors=True)
