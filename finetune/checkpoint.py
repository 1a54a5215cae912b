"""Per-epoch checkpoints, so a job delivered again resumes where its last worker stopped."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras

STATE_FILE = "state.json"


class Checkpointer:
    """Keeps the latest trained model (weights and optimizer state) and the run's state in a folder.

    The model file is written first under a name of its own, the state file last and by rename,
    so a crash at any point leaves the previous complete checkpoint readable.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def save(self, trainee: keras.Model, state: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        model_name = f"trainee-{state['phase']}-{state['epoch']}.keras"
        temporary = self.directory / f".{model_name}.tmp.keras"
        trainee.save(temporary)
        os.replace(temporary, self.directory / model_name)
        state_tmp = self.directory / f".{STATE_FILE}.tmp"
        state_tmp.write_text(json.dumps({**state, "model_file": model_name}))
        os.replace(state_tmp, self.directory / STATE_FILE)
        for stale in self.directory.glob("trainee-*.keras"):
            if stale.name != model_name:
                stale.unlink(missing_ok=True)

    def load(self) -> tuple[dict, keras.Model] | None:
        state_path = self.directory / STATE_FILE
        if not state_path.exists():
            return None
        state = json.loads(state_path.read_text())
        trainee = keras.models.load_model(self.directory / state["model_file"])
        return state, trainee

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
