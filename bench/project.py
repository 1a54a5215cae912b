"""The project's own training (``finetune.ml.training.recipe.train``), timed the same way as the seed's.

``run_in_child`` runs it in a process of its own, as a worker would (``python -m
bench.project``), so that the process's peak resident memory is the job's: the
child reports it with its figures, next to the decoded dataset's and the model's bytes.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.timing import steady_ips
from finetune.ml.spec import TrainingSpec


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
            "load_s": self.result.timings["load_s"] if self.result is not None else None,
            "history": self.result.history if self.result is not None else [],
            "phases": {name: {**vars(phase), "wall_ips": phase.wall_ips} for name, phase in self.phases.items()},
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
    from finetune.ml.training.recipe import train

    clock = BatchClock()
    start = time.perf_counter()
    result = train(spec, dataset_dir=Path(data_dir), progress=clock)
    total_s = time.perf_counter() - start
    run = ProjectRun(
        label=label,
        total_s=total_s,
        accuracy=float(result.metrics["accuracy"]),
        num_train=result.num_train,
        result=result,
    )
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
    from finetune.stores.models import ModelStore

    manifest = ModelStore(model_dir).save(run.result, dataset_id="bench")
    return manifest["id"]


def _proc_status_bytes(field: str) -> int | None:
    """A memory figure of this process from Linux's /proc/self/status (None where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_bytes() -> int:
    """This process's resident memory now (0 where unavailable)."""
    return _proc_status_bytes("VmRSS") or 0


def _peak_rss_bytes() -> int:
    """This process's peak resident memory so far: VmHWM, the peak of this program's own address space.

    Not ``getrusage().ru_maxrss``: Linux carries the peak of the process image before ``exec`` over into
    it, and a child started by a big parent would report the parent's size.
    """
    return _proc_status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_in_child(
    data_dir: Path,
    spec: TrainingSpec,
    *,
    label: str,
    work_dir: Path,
    model_dir: Path | None = None,
    copies: int = 1,
    classes: int = 0,
    ceilings: dict | None = None,
    timeout_s: float = 3600,
) -> dict:
    """``run_project`` in a child process; its ``as_dict()`` plus ``memory``, and with ``model_dir``
    ``model_ids``: the model saved ``copies`` times into the store there (``model_id``: the first).
    With ``ceilings`` (``measure_ceilings`` keywords), the child also measures the ceilings for
    ``classes`` classes right after the training, in the same process (``ceilings``).
    The child's output goes to ``work_dir/<name>.log``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    name = "project-" + "".join(c if c.isalnum() else "-" for c in label)[:40].strip("-")
    request, answer, log = (work_dir / f"{name}{suffix}" for suffix in (".request.json", ".json", ".log"))
    answer.unlink(missing_ok=True)
    request.write_text(
        json.dumps(
            {
                "data_dir": str(data_dir),
                "spec": spec.model_dump(mode="json"),
                "label": label,
                "model_dir": str(model_dir) if model_dir else None,
                "copies": copies,
                "classes": classes,
                "ceilings": ceilings,
                "answer": str(answer),
            }
        )
    )
    with open(log, "wb") as out:
        completed = subprocess.run(
            [sys.executable, "-m", "bench.project", str(request)],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            cwd=Path(__file__).resolve().parents[1],
            env=os.environ.copy(),
        )
    if completed.returncode != 0 or not answer.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"the project's training exited with {completed.returncode}; its log ends:\n{tail}")
    return json.loads(answer.read_text())


def _child_main(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    import keras  # noqa: F401  (TensorFlow and Keras loaded: part of the baseline, not of the job)
    import tensorflow as tf

    tf.constant(0)  # the runtime initialised, as in a worker before its first job
    import finetune.ml.training.recipe  # noqa: F401

    spec = TrainingSpec.model_validate(request["spec"])
    baseline = _rss_bytes()
    run = run_project(Path(request["data_dir"]), spec, label=request["label"])
    peak = _peak_rss_bytes()
    ceilings = []
    if request.get("ceilings"):  # in this process, right after the training (after the memory figures)
        from bench.ceilings import measure_ceilings

        ceilings.append(measure_ceilings(spec, request["classes"], **request["ceilings"]))
    result = run.result
    images = result.num_train + result.num_validation
    answer = run.as_dict()
    if ceilings:
        from bench.ceilings import best_of

        answer["ceilings"] = best_of(ceilings)
    answer["memory"] = {
        "baseline_rss": baseline,
        "peak_rss": peak,
        "decoded_bytes": images * spec.image_size * spec.image_size * 3,
        "model_bytes": int(result.model.count_params()) * 4,
        "trainable_bytes": int(sum(int(np.prod(w.shape)) for w in result.model.trainable_weights)) * 4,
    }
    if request.get("model_dir"):
        answer["model_ids"] = [save_model(run, Path(request["model_dir"])) for _ in range(request["copies"])]
        answer["model_id"] = answer["model_ids"][0]
    Path(request["answer"]).write_text(json.dumps(answer, default=float))
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    code = _child_main(sys.argv[1])
    sys.stdout.flush()
    os._exit(code)  # skip TensorFlow's slow teardown
