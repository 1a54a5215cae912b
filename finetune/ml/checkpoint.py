"""Per-epoch checkpoints, so a job delivered again resumes where its last worker stopped."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from finetune.states import Phase

if TYPE_CHECKING:  # keras is imported where a model is saved or loaded: the reaper reads STATE_FILE without it
    import keras

STATE_FILE = "state.json"  # names the model file it goes with (`model_file`); written last
MODEL_FILE_KEY = "model_file"
HEAD, MODEL = "head", "model"  # what a checkpoint's trainee is: the head alone (cached features) or the classifier


def checkpoint_files(state_data: dict) -> list[str]:
    """The files a checkpoint's state names (the trainee, and early stopping's best weights if kept):
    what a copy of the checkpoint must carry besides the state file itself."""
    best_file = (state_data.get("stopping") or {}).get("best_file")
    return [state_data[MODEL_FILE_KEY], *([best_file] if best_file else [])]


@dataclass
class TrainingState:
    """Where a run stands after its last completed epoch: what a checkpoint restores."""

    phase: str = Phase.WARMUP
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    warmup_metrics: dict | None = None
    trainee: str | None = None  # HEAD or MODEL; None before the first epoch
    # The phase's early stopping and schedule (finetune.ml.training.control.PhaseControl.state), and
    # `best_file`: the file of the best epoch's weights when early stopping keeps them.
    stopping: dict | None = None

    @classmethod
    def from_json(cls, data: dict) -> TrainingState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass
class Resumed:
    state: TrainingState
    trainee: keras.Model
    best_weights: list[np.ndarray] | None = None  # early stopping's best epoch so far, when it keeps it


class Checkpointer:
    """Keeps the latest trained model (weights and optimizer state) and the run's state in a folder.

    The model file is written first under a name of its own, the state file last and by rename,
    so a crash at any point leaves the previous complete checkpoint readable.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def save(self, trainee: keras.Model, state: TrainingState, *, best_weights: list[np.ndarray] | None = None) -> None:
        """`best_weights`: early stopping's new best epoch (written, like the model, before the state
        that names it; an unchanged best keeps the file the state already names)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        model_name = f"trainee-{state.phase}-{state.epoch}.keras"
        temporary = self.directory / f".{model_name}.tmp.keras"
        trainee.save(temporary)
        os.replace(temporary, self.directory / model_name)
        if best_weights is not None:
            best_name = f"best-{state.phase}-{state.epoch}.npz"
            with open(self.directory / f".{best_name}.tmp", "wb") as stream:
                np.savez(stream, *best_weights)
            os.replace(self.directory / f".{best_name}.tmp", self.directory / best_name)
            state.stopping = {**(state.stopping or {}), "best_file": best_name}
        state_tmp = self.directory / f".{STATE_FILE}.tmp"
        state_tmp.write_text(json.dumps({**dataclasses.asdict(state), MODEL_FILE_KEY: model_name}))
        os.replace(state_tmp, self.directory / STATE_FILE)
        kept = {model_name, (state.stopping or {}).get("best_file")}
        for stale in [*self.directory.glob("trainee-*.keras"), *self.directory.glob("best-*.npz")]:
            if stale.name not in kept:
                stale.unlink(missing_ok=True)

    def load(self) -> Resumed | None:
        state_path = self.directory / STATE_FILE
        if not state_path.exists():
            return None
        import keras

        data = json.loads(state_path.read_text())
        trainee = keras.models.load_model(self.directory / data[MODEL_FILE_KEY])
        state = TrainingState.from_json(data)
        best_file = (state.stopping or {}).get("best_file")
        best_weights = None
        if best_file:
            with np.load(self.directory / best_file) as arrays:
                best_weights = [arrays[f"arr_{index}"] for index in range(len(arrays.files))]
        return Resumed(state, trainee, best_weights)

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
