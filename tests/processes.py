"""Environments and start-up waits for the service's real processes, shared by the tests that start them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

from finetune.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STORAGE_FOLDERS = {"MODEL_DIR": "models", "DATA_DIR": "data", "CACHE_DIR": "cache", "KERAS_HOME": "keras"}


def isolated_env(root: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any service setting, its stores under `root` (created), no GPU, quiet TF."""
    env = {key: value for key, value in os.environ.items() if key.lower() not in Settings.model_fields}
    env.update({key: str(root / folder) for key, folder in STORAGE_FOLDERS.items()})
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", **extra)
    for key in STORAGE_FOLDERS:
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


@contextmanager
def announced_service(argv: list[str], env: dict[str, str], log: Path, port: int, *, hang_guard_s: float = 300):
    """Start `argv` (the launcher or ``finetune serve``) in its own session; yield it once it has printed where the
    API is (after its own check that the API answers), with the processes it started. Everything is killed after."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            argv, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + hang_guard_s
        while f"http://127.0.0.1:{port}/docs" not in log.read_text():
            assert process.poll() is None, f"{argv} exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the service did not come up within {hang_guard_s} s (hang guard)"
            time.sleep(0.5)
        children = psutil.Process(process.pid).children(recursive=True)
        yield process, children
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for child in children:
            if child.is_running():
                child.kill()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
