"""Per-phase control of training: early stopping and the learning-rate schedule, as Keras' own callbacks
(EarlyStopping, ReduceLROnPlateau, LearningRateScheduler) whose state a checkpoint keeps, so a resumed
phase stops, keeps its best epoch and schedules its rates as the uninterrupted one would."""

from __future__ import annotations

import math

import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from finetune.ml.spec import EarlyStoppingSpec, PhaseSpec, ScheduleSpec, TrainingSpec


def scheduled_rate(schedule: ScheduleSpec, base: float, epochs: int, epoch: int) -> float | None:
    """The learning rate of 0-based `epoch` of a phase of `epochs`; None where the plateau rule decides.

    A linear ramp to `base` over `warmup_epochs`, then constant, or a half cosine from `base` at the
    first epoch after the ramp to `min_lr` at the phase's last epoch."""
    if epoch < schedule.warmup_epochs:
        return base * (epoch + 1) / schedule.warmup_epochs
    if schedule.kind == "constant":
        return base
    if schedule.kind == "plateau":
        return None
    span = epochs - schedule.warmup_epochs
    done = (epoch - schedule.warmup_epochs) / (span - 1) if span > 1 else 1.0
    return schedule.min_lr + (base - schedule.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))


def _mode(monitor: str) -> str:
    return "max" if monitor == "val_accuracy" else "min"


def _number(value) -> float | None:
    return None if value is None else float(value)


class PhaseEarlyStopping(keras.callbacks.EarlyStopping):
    """keras.callbacks.EarlyStopping, resumable: its counters (and the best weights) are restored after
    Keras resets them at the start of `fit`."""

    def __init__(self, spec: EarlyStoppingSpec, *, resumed: dict | None = None, best_weights=None):
        super().__init__(
            monitor=spec.monitor,
            patience=spec.patience,
            min_delta=spec.min_delta,
            mode=_mode(spec.monitor),
            restore_best_weights=spec.restore_best,
        )
        self.resumed, self.resumed_weights = resumed, best_weights

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resumed:
            self.wait, self.best = self.resumed["wait"], self.resumed["best"]
            self.best_epoch, self.stopped_epoch = self.resumed["best_epoch"], self.resumed["stopped_epoch"]
            self.best_weights = self.resumed_weights

    def state(self) -> dict:
        return {
            "wait": int(self.wait),
            "best": _number(self.best),
            "best_epoch": int(self.best_epoch),
            "stopped_epoch": int(self.stopped_epoch),
        }


class PlateauSchedule(keras.callbacks.ReduceLROnPlateau):
    """keras.callbacks.ReduceLROnPlateau from the end of the ramp on, resumable like PhaseEarlyStopping."""

    def __init__(self, schedule: ScheduleSpec, *, resumed: dict | None = None):
        super().__init__(
            monitor=schedule.monitor,
            factor=schedule.factor,
            patience=schedule.patience,
            mode=_mode(schedule.monitor),
            min_lr=schedule.min_lr,
            verbose=0,
        )
        self.warmup_epochs, self.resumed = schedule.warmup_epochs, resumed

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resumed:
            self.wait, self.best = self.resumed["wait"], self.resumed["best"]
            self.cooldown_counter = self.resumed["cooldown_counter"]

    def on_epoch_end(self, epoch, logs=None):
        if epoch >= self.warmup_epochs:
            super().on_epoch_end(epoch, logs)

    def state(self) -> dict:
        return {"wait": int(self.wait), "best": _number(self.best), "cooldown_counter": int(self.cooldown_counter)}


def learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class PhaseControl:
    """A phase's early stopping and schedule: the callbacks for its `fit` and the state a checkpoint keeps.

    `resumed` is the `stopping` state of a checkpoint of this phase (None for a fresh phase)."""

    def __init__(self, phase: PhaseSpec, *, resumed: dict | None = None, best_weights=None):
        self.phase, self.resumed = phase, resumed or {}
        self.stopper = (
            PhaseEarlyStopping(
                phase.early_stopping, resumed=self.resumed.get("early_stopping"), best_weights=best_weights
            )
            if phase.early_stopping
            else None
        )
        schedule = phase.schedule
        self.plateau = (
            PlateauSchedule(schedule, resumed=self.resumed.get("plateau"))
            if schedule and schedule.kind == "plateau"
            else None
        )
        self.scheduler = (
            keras.callbacks.LearningRateScheduler(
                lambda epoch, rate: _or(scheduled_rate(schedule, phase.learning_rate, phase.epochs, epoch), rate)
            )
            if schedule
            else None
        )

    @property
    def callbacks(self) -> list[keras.callbacks.Callback]:
        """In the order they must run: the rate set at each epoch's start, then stopping and plateau at its end."""
        return [callback for callback in (self.scheduler, self.stopper, self.plateau) if callback is not None]

    def resume_rate(self, trainee: keras.Model) -> None:
        """The checkpoint's learning rate back on the optimizer (a plateau's reductions included)."""
        if "learning_rate" in self.resumed:
            trainee.optimizer.learning_rate = self.resumed["learning_rate"]

    def stopped(self) -> bool:
        return self.stopper is not None and self.stopper.stopped_epoch > 0

    def stopped_when_resumed(self) -> bool:
        return bool(self.resumed.get("early_stopping", {}).get("stopped_epoch"))

    def improved_at(self, epoch: int) -> bool:
        """Whether 0-based `epoch` is the best so far (its weights are the ones to keep)."""
        return self.stopper is not None and self.stopper.restore_best_weights and self.stopper.best_epoch == epoch

    def kept_epoch(self) -> int | None:
        """The 1-based epoch whose weights the phase ends with when they are not its last epoch's."""
        if self.stopper is None or not self.stopper.restore_best_weights or self.stopper.best_weights is None:
            return None
        return self.stopper.best_epoch + 1

    def keep_best(self, trainee: keras.Model) -> None:
        """What EarlyStopping does at the end of `fit`, for a phase resumed after its last epoch."""
        if self.stopper is not None and self.stopper.restore_best_weights and self.stopper.resumed_weights:
            trainee.set_weights(self.stopper.resumed_weights)

    def state(self, trainee: keras.Model) -> dict:
        state: dict = {"learning_rate": learning_rate(trainee)}
        if self.stopper is not None:
            state["early_stopping"] = self.stopper.state()
        if self.plateau is not None:
            state["plateau"] = self.plateau.state()
        return state


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def class_weights(spec: TrainingSpec, classes: list[str], labels: np.ndarray) -> dict[int, float] | None:
    """`fit`'s class_weight for the spec's `class_weight` on the training labels: 'balanced' is
    scikit-learn's compute_class_weight (n_samples / (n_classes * count)); a map names classes by name,
    the others weigh 1. A name the dataset lacks is a ValueError."""
    wanted = spec.class_weight
    if wanted is None:
        return None
    if wanted == "balanced":
        present = np.unique(labels)
        weights = compute_class_weight("balanced", classes=present, y=labels)
        return {int(label): float(weight) for label, weight in zip(present, weights)}
    unknown = sorted(set(wanted) - set(classes))
    if unknown:
        raise ValueError(f"class_weight names classes the dataset lacks: {', '.join(unknown)}")
    return {index: float(wanted.get(name, 1.0)) for index, name in enumerate(classes)}
