"""The project's own training (``finetune.training.train``), timed the same way as the seed's."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.timing import steady_ips
from finetune.spec import TrainingSpec


@dataclass
class ProjectPhase:
    epochs: int
    wall_s: float  # the project's own timings[f"{phase}_s"]: the whole phase (feature extraction included)
    reported_ips: float | None  # the project's own timings["images_per_s"][phase]
    steady_ips: float  # bench.timing.steady_ips over batch-end progress events (nan if none)
    images: int  # epochs * num_train

    @property
    def wall_ips(self) -> float:
        return self.images / self.wall_s if self.wall_s else float("nan")


@dataclass
class ProjectRun:
    label: str
    total_s: float
    accuracy: float
    num_train: int
    phases: dict[str, ProjectPhase] = field(default_factory=dict)
    result: object = None  # the TrainResult, for saving

    def as_dict(self) -> dict:
        return {
            "label": self.label,
            "total_s": self.total_s,
            "accuracy": self.accuracy,
            "num_train": self.num_train,
            "phases": {
                name: {**vars(phase), "wall_ips": phase.wall_ips} for name, phase in self.phases.items()
            },
        }


class BatchClock:
    """A ``progress`` callback: perf_counter() at every batch end, per (phase, epoch)."""

    def __init__(self):
        self.clocks: dict[str, dict[int, list[tuple[int, float]]]] = {}

    def __call__(self, event) -> None:
        if event.batch and event.metrics is None:
            self.clocks.setdefault(event.phase, {}).setdefault(event.epoch, []).append(
                (event.batch, time.perf_counter())
            )

    def steady_ips(self, phase: str, *, num_train: int, batch_size: int) -> float:
        """Batch sizes are known: all full but the last of an epoch, which holds the remainder."""
        last = num_train - (-(-num_train // batch_size) - 1) * batch_size
        epochs = [
            [(clock, last if batch * batch_size >= num_train else batch_size) for batch, clock in batches]
            for batches in self.clocks.get(phase, {}).values()
        ]
        return steady_ips(epochs)


def run_project(data_dir: Path, spec: TrainingSpec, *, label: str) -> ProjectRun:
    """``train(spec, dataset_dir=...)`` with a progress clock; phases from the result's timings."""
    from finetune.training import train

    clock = BatchClock()
    start = time.perf_counter()
    result = train(spec, dataset_dir=Path(data_dir), progress=clock)
    total_s = time.perf_counter() - start
    run = ProjectRun(label=label, total_s=total_s, accuracy=float(result.metrics["accuracy"]),
                     num_train=result.num_train, result=result)
    phases = {"warmup": spec.warmup, "finetune": spec.finetune}
    for name, phase in phases.items():
        if phase is None or not phase.epochs:
            continue
        run.phases[name] = ProjectPhase(
            epochs=phase.epochs,
            wall_s=result.timings[f"{name}_s"],
            reported_ips=result.timings["images_per_s"][name],
            steady_ips=clock.steady_ips(name, num_train=result.num_train, batch_size=spec.batch_size),
            images=phase.epochs * result.num_train,
        )
    return run


def save_model(run: ProjectRun, model_dir: Path) -> str:
    """Save the run's model into a model store at ``model_dir``; returns the model id."""
    from finetune.store import ModelStore

    manifest = ModelStore(model_dir).save(run.result, dataset_id="bench")
    return manifest["id"]
