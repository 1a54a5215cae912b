"""What training tells the outside world: progress events, cancellation, per-epoch validation and checkpoints."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import keras

from finetune.errors import JobCancelled
from finetune.ml.training.control import PhaseControl, learning_rate
from finetune.ml.training.validation import Validation


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


ProgressFn = Callable[[ProgressEvent], None]
CancelFn = Callable[[], bool]
HISTORY_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def no_progress(event: ProgressEvent) -> None:
    return None


def never() -> bool:
    return False


class EpochValidation(keras.callbacks.Callback):
    """First at each epoch's end: the held-out metrics into the logs, for the callbacks after it
    (early stopping, the plateau schedule, PhaseCallback) to read."""

    def __init__(self, validation: Validation):
        super().__init__()
        self.validation = validation

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.validation.run())


class PhaseCallback(keras.callbacks.Callback):
    """Reports batches and epochs, stops at the next batch when cancelled, records and checkpoints each
    epoch (its learning rate, and where the phase stopped early and which epoch it keeps). Runs last,
    after EpochValidation and the phase's control have updated the logs and their state."""

    def __init__(
        self,
        *,
        phase: str,
        epochs: int,
        batches: int,
        history: list[dict],
        report: ProgressFn,
        should_cancel: CancelFn,
        on_epoch_saved: Callable[[int], None],
        validation: Validation,
        control: PhaseControl | None = None,
    ):
        super().__init__()
        self.phase, self.epochs, self.batches = phase, epochs, batches
        self.history, self.report, self.should_cancel = history, report, should_cancel
        self.on_epoch_saved, self.validation, self.control = on_epoch_saved, validation, control
        self.epoch_rate: float | None = None
        self.train_seconds = 0.0
        self.epochs_run = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = self.batch_clock = time.perf_counter()
        self.epoch_rate = learning_rate(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self.batch_clock = time.perf_counter()
        if self.should_cancel():
            raise JobCancelled("cancelled during training")
        self.report(
            ProgressEvent(self.phase, epoch=self._epoch + 1, epochs=self.epochs, batch=batch + 1, batches=self.batches)
        )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None and "val_loss" in logs else {**(logs or {}), **self.validation.run()}
        self.train_seconds += self.batch_clock - self.epoch_started
        self.epochs_run += 1
        row = {
            "phase": self.phase,
            "epoch": epoch + 1,
            **{key: float(logs[key]) for key in HISTORY_METRICS if key in logs},
            "learning_rate": self.epoch_rate,
            "seconds": time.perf_counter() - self.epoch_started,
            **self._phase_end_marks(epoch),
        }
        self.history.append(row)
        self.on_epoch_saved(epoch + 1)
        self.report(
            ProgressEvent(
                self.phase,
                epoch=epoch + 1,
                epochs=self.epochs,
                batch=self.batches,
                batches=self.batches,
                metrics=row,
                history=list(self.history),
            )
        )

    def _phase_end_marks(self, epoch: int) -> dict:
        """On the phase's last row: `stopped_early` when early stopping ended it, and `kept_epoch`
        (1-based) when it ends with the weights of its best epoch."""
        control = self.control
        if control is None or control.stopper is None:
            return {}
        stopped = control.stopped()
        if not stopped and epoch + 1 < self.epochs:
            return {}
        kept = control.kept_epoch()
        return {"stopped_early": stopped, **({"kept_epoch": kept} if kept is not None else {})}

    @property
    def _epoch(self) -> int:
        return sum(1 for row in self.history if row["phase"] == self.phase)
