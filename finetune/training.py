"""The two-phase recipe of the seed: train the head on a frozen backbone, then fine-tune its last block."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from finetune.backbones import get_backbone
from finetune.checkpoint import Checkpointer
from finetune.dataset import Skipped, scan_dataset, stratified_split
from finetune.devices import DevicePlan, apply_precision, detect_gpus, make_strategy, plan_devices
from finetune.errors import JobCancelled
from finetune.evaluation import evaluate_predictions
from finetune.model import assemble, build_backbone, build_head, compile_for, unfreeze_from
from finetune.pipeline import decode_dataset, make_dataset
from finetune.spec import PhaseSpec, TrainingSpec


@dataclass
class ProgressEvent:
    """What a progress callback receives. `epoch` is 1-based within the phase; `metrics` is set at epoch end."""

    phase: str
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    metrics: dict | None = None
    history: list[dict] | None = None


@dataclass
class TrainResult:
    model: keras.Model
    spec: TrainingSpec
    classes: list[str]
    metrics: dict
    warmup_metrics: dict | None
    history: list[dict]
    timings: dict
    skipped: list[Skipped] = field(default_factory=list)
    num_train: int = 0
    num_validation: int = 0


ProgressFn = Callable[[ProgressEvent], None]
CancelFn = Callable[[], bool]


class _PhaseCallback(keras.callbacks.Callback):
    """Reports batches and epochs, stops at the next batch when cancelled, checkpoints each epoch."""

    def __init__(self, *, phase: str, epochs: int, batches: int, history: list[dict],
                 report: ProgressFn, should_cancel: CancelFn, on_epoch_saved: Callable[[int], None]):
        super().__init__()
        self.phase, self.epochs, self.batches = phase, epochs, batches
        self.history, self.report, self.should_cancel = history, report, should_cancel
        self.on_epoch_saved = on_epoch_saved
        self.train_seconds = 0.0
        self.epochs_run = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = self.batch_clock = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.batch_clock = time.perf_counter()
        if self.should_cancel():
            raise JobCancelled("cancelled during training")
        self.report(ProgressEvent(self.phase, epoch=self._epoch + 1, epochs=self.epochs,
                                  batch=batch + 1, batches=self.batches))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.train_seconds += self.batch_clock - self.epoch_started
        self.epochs_run += 1
        row = {
            "phase": self.phase,
            "epoch": epoch + 1,
            **{key: float(logs[key]) for key in ("loss", "accuracy", "val_loss", "val_accuracy") if key in logs},
            "seconds": time.perf_counter() - self.epoch_started,
        }
        self.history.append(row)
        self.on_epoch_saved(epoch + 1)
        self.report(ProgressEvent(self.phase, epoch=epoch + 1, epochs=self.epochs, batch=self.batches,
                                  batches=self.batches, metrics=row, history=list(self.history)))

    @property
    def _epoch(self) -> int:
        return sum(1 for row in self.history if row["phase"] == self.phase)


def _predict_labels(model: keras.Model, data: tf.data.Dataset) -> np.ndarray:
    return np.argmax(model.predict(data, verbose=0), axis=-1)


def _no_progress(event: ProgressEvent) -> None:
    return None


def _never() -> bool:
    return False


def train(
    spec: TrainingSpec,
    *,
    dataset_dir: str | Path,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    checkpoint_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    max_pixels: int = 50_000_000,
    device_plan: DevicePlan | None = None,
) -> TrainResult:
    """Run the recipe on `dataset_dir` and return the trained model with its evaluations and timings.

    With `checkpoint_dir`, the state after every epoch is saved there and a later call with the
    same folder resumes from it. `should_cancel` is asked after every batch; it may also raise.
    """
    report = progress or _no_progress
    cancelled = should_cancel or _never
    checkpointer = Checkpointer(checkpoint_dir) if checkpoint_dir else None
    started = time.perf_counter()
    report(ProgressEvent("loading"))

    scan = scan_dataset(dataset_dir, probe=False, max_pixels=max_pixels)
    decoded = decode_dataset(scan, size=spec.image_size, max_pixels=max_pixels,
                             cache_dir=Path(cache_dir) if cache_dir else None)
    classes = decoded.scan.classes
    train_idx, val_idx = stratified_split(decoded.labels, validation_split=spec.validation_split, seed=spec.seed)
    preprocess = get_backbone(spec.backbone).preprocess()

    plan = device_plan or plan_devices(detect_gpus())
    apply_precision(plan)
    strategy = make_strategy(plan)
    batch_size = spec.batch_size * plan.replicas

    pixels = decoded.pixels if isinstance(decoded.pixels, np.memmap) else tf.convert_to_tensor(decoded.pixels)
    decoded.pixels = None  # one copy of the images: the tensor (or the memory map)

    def dataset(indices, *, augment: bool, shuffle: bool):
        return make_dataset(
            pixels,
            decoded.labels,
            subset=indices,
            batch_size=batch_size,
            preprocess=preprocess,
            augmentation=spec.augmentation if augment else None,
            shuffle_seed=spec.seed if shuffle else None,
        )

    train_data = dataset(train_idx, augment=True, shuffle=True)
    val_data = dataset(val_idx, augment=False, shuffle=False)
    batches = int(np.ceil(len(train_idx) / batch_size))
    load_s = time.perf_counter() - started

    resumed = checkpointer.load() if checkpointer else None
    state = resumed[0] if resumed else {"phase": "warmup", "epoch": 0, "history": [], "warmup_metrics": None}
    history: list[dict] = state["history"]
    timings = {"load_s": load_s, "warmup_s": 0.0, "finetune_s": 0.0, "images_per_s": {"warmup": None, "finetune": None}}
    use_feature_cache = spec.augmentation is None and plan.replicas == 1

    with strategy.scope():
        if resumed and state["phase"] == "finetune":
            model = resumed[1]
            backbone = model.layers[1]
        else:
            backbone = build_backbone(spec)
            head = resumed[1] if resumed and state.get("trainee") == "head" else build_head(
                tuple(backbone.output.shape[1:]), head=spec.head, num_classes=len(classes))
            model = resumed[1] if resumed and state.get("trainee") == "model" else assemble(
                backbone, head, image_size=spec.image_size)
            if resumed and state.get("trainee") == "model":
                backbone = model.layers[1]

    def run_phase(name: str, phase: PhaseSpec, trainee: keras.Model, fit_train, fit_val, *,
                  initial_epoch: int, trainee_kind: str, extra_train_s: float = 0.0) -> None:
        def save(epoch: int) -> None:
            if checkpointer:
                checkpointer.save(trainee, {"phase": name, "epoch": epoch, "history": history,
                                            "warmup_metrics": state["warmup_metrics"], "trainee": trainee_kind})

        callback = _PhaseCallback(phase=name, epochs=phase.epochs, batches=batches, history=history,
                                  report=report, should_cancel=cancelled, on_epoch_saved=save)
        phase_started = time.perf_counter()
        if phase.epochs > initial_epoch:
            report(ProgressEvent(name, epoch=initial_epoch, epochs=phase.epochs, batches=batches))
            trainee.fit(fit_train, validation_data=fit_val, epochs=phase.epochs, initial_epoch=initial_epoch,
                        callbacks=[callback], verbose=0, shuffle=False)
        timings[f"{name}_s"] = time.perf_counter() - phase_started + extra_train_s
        train_s = callback.train_seconds + extra_train_s
        if callback.epochs_run and train_s > 0:
            timings["images_per_s"][name] = len(train_idx) * callback.epochs_run / train_s

    if state["phase"] == "warmup":
        if use_feature_cache and state.get("trainee") != "model":
            features_started = time.perf_counter()
            report(ProgressEvent("warmup", epochs=spec.warmup.epochs, batches=batches))
            with strategy.scope():
                train_features = backbone.predict(dataset(train_idx, augment=False, shuffle=False), verbose=0)
                val_features = backbone.predict(val_data, verbose=0)
            feature_s = time.perf_counter() - features_started
            if cancelled():
                raise JobCancelled("cancelled during training")
            feature_train = tf.data.Dataset.from_tensor_slices(
                (train_features, decoded.labels[train_idx])).shuffle(len(train_idx), seed=spec.seed).batch(batch_size)
            feature_val = tf.data.Dataset.from_tensor_slices((val_features, decoded.labels[val_idx])).batch(batch_size)
            with strategy.scope():
                if not (resumed and state.get("trainee") == "head"):
                    compile_for(head, spec.warmup)
            run_phase("warmup", spec.warmup, head, feature_train, feature_val,
                      initial_epoch=state["epoch"], trainee_kind="head", extra_train_s=feature_s)
            warmup_evaluation_data = (head, feature_val)
        else:
            with strategy.scope():
                if not resumed:
                    compile_for(model, spec.warmup)
            run_phase("warmup", spec.warmup, model, train_data, val_data,
                      initial_epoch=state["epoch"], trainee_kind="model")
            warmup_evaluation_data = (model, val_data)
        report(ProgressEvent("evaluating"))
        state["warmup_metrics"] = evaluate_predictions(
            decoded.labels[val_idx], _predict_labels(*warmup_evaluation_data), classes)

    if spec.finetune is not None:
        with strategy.scope():
            if state["phase"] != "finetune":
                unfreeze_from(backbone, spec.unfreeze_index)
                compile_for(model, spec.finetune)
        run_phase("finetune", spec.finetune, model, train_data, val_data,
                  initial_epoch=state["epoch"] if state["phase"] == "finetune" else 0, trainee_kind="model")

    if spec.finetune is None and state["warmup_metrics"] is not None:
        metrics = state["warmup_metrics"]
    else:
        report(ProgressEvent("evaluating"))
        metrics = evaluate_predictions(decoded.labels[val_idx], _predict_labels(model, val_data), classes)
    return TrainResult(
        model=model,
        spec=spec,
        classes=classes,
        metrics=metrics,
        warmup_metrics=state["warmup_metrics"],
        history=history,
        timings=timings,
        skipped=decoded.scan.skipped,
        num_train=len(train_idx),
        num_validation=len(val_idx),
    )
