"""Job checkpoints where every worker can read them, so a job whose host died resumes on another host.

The checkpoint store is `CHECKPOINT_DIR` (default `MODEL_DIR/.checkpoints`), one folder per job
holding `state.json` and the trainee file it names (see finetune.ml.checkpoint).

- A local store (one host, or a folder every host mounts) is written in place by the job's
  `Checkpointer`: model file, then the state by rename.
- A remote store (`s3://`) is not written by training at all: the `Checkpointer` writes the local
  cache as before, and a `CheckpointUploader` thread copies the newest complete checkpoint up in the
  background — the model file first, the state object last (each object appears whole or not at
  all), then the stale model files go. At most one upload is in flight; epochs that end during an
  upload are skipped and the newest one wins, so training never waits for the store. On resume the
  shared checkpoint is downloaded when it is further along than what the local cache holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from finetune.ml.checkpoint import STATE_FILE, checkpoint_files
from finetune.stores.location import Location, newest_change

log = logging.getLogger("finetune.stores.checkpoints")
UPLOAD_POLL_S = 0.5  # how often the uploader looks for a newer local state file (a stat)
COPY_CHUNK = 8 * 1024**2
# The most of the wall time the uploader may spend uploading: after an upload of t seconds it rests
# t * (1 / share - 1) before looking again. Measured (bench/checkpoints.py, VGG16 checkpoint of 177 MB
# to moto on the same 2 cores, ~3.5 s an upload): uploading after every 2-s epoch cost training ~2.3 s
# of wall time per upload (+83%); at a tenth of the time, the lost work after a host dies is bounded by
# about ten uploads' time (~35 s there) and the cost by about a tenth of each upload's.
UPLOAD_BUSY_SHARE = 0.1
TRAINEE_GLOB = "trainee-*.keras"
BEST_GLOB = "best-*.npz"  # early stopping's kept weights (finetune.ml.checkpoint)


def epochs_done(state_text: str) -> int:
    """How far a checkpoint is: its history rows (both phases together), which only grow."""
    return len(json.loads(state_text).get("history", []))


def read_local_state(directory: Path) -> str | None:
    try:
        return (directory / STATE_FILE).read_text()
    except FileNotFoundError:
        return None


class CheckpointStore:
    def __init__(self, url: str, *, staging_root: Path):
        """`staging_root`: this host's cache folder where a job writes before the upload (remote stores)."""
        self.location = Location(str(url))
        self.staging_root = Path(staging_root)

    @property
    def is_remote(self) -> bool:
        return not self.location.is_local

    def working_dir(self, job_id: str) -> Path:
        """Where the job's process writes its checkpoints: the store itself when local, else this host's cache."""
        return self.location.local_path(job_id) if self.location.is_local else self.staging_root / job_id

    def restore(self, job_id: str) -> int | None:
        """Remote store: copy the job's shared checkpoint into `working_dir` when it is further along than the
        local one (another host ran the job, or this host's cache was lost). Returns the epochs it holds
        then, None when nothing was downloaded."""
        if not self.is_remote:
            return None
        try:
            shared_state = self.location.read_text(job_id, STATE_FILE)
        except FileNotFoundError:
            return None
        local = self.working_dir(job_id)
        local_state = read_local_state(local)
        shared_epochs = epochs_done(shared_state)
        if local_state is not None and epochs_done(local_state) >= shared_epochs:
            return None
        names = checkpoint_files(json.loads(shared_state))
        local.mkdir(parents=True, exist_ok=True)
        for name in names:
            partial = local / f".{name}.download"
            self.location.fs.get_file(self.location.path(job_id, name), str(partial))
            os.replace(partial, local / name)
        state_tmp = local / f".{STATE_FILE}.download"
        state_tmp.write_text(shared_state)
        os.replace(state_tmp, local / STATE_FILE)
        for stale in [*local.glob(TRAINEE_GLOB), *local.glob(BEST_GLOB)]:
            if stale.name not in names:
                stale.unlink(missing_ok=True)
        return shared_epochs

    def uploader(self, job_id: str, *, busy_share: float = UPLOAD_BUSY_SHARE) -> CheckpointUploader | None:
        """A started background uploader for a remote store; None for a local one (written in place)."""
        if not self.is_remote:
            return None
        uploader = CheckpointUploader(self.location, job_id, self.working_dir(job_id), busy_share=busy_share)
        uploader.start()
        return uploader

    def remove(self, job_id: str) -> None:
        """The job's checkpoint, here and in the store: the state first, so no reader meets a state whose
        model file is gone."""
        shutil.rmtree(self.working_dir(job_id), ignore_errors=True)
        if self.is_remote:
            self.remove_shared(job_id)

    def remove_shared(self, job_id: str) -> None:
        self.location.remove(job_id, STATE_FILE)
        try:
            self.location.fs.rm(self.location.path(job_id), recursive=True)
        except FileNotFoundError:
            pass

    def shared_jobs(self) -> dict[str, float]:
        """Every job folder in the store with the time of its newest change."""
        return {
            name: self.location.newest_change(name) for name in self.location.children() if not name.startswith(".")
        }


@dataclass
class UploadLog:
    """What an uploader did: for the log and the benchmark."""

    seconds: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)


class CheckpointUploader(threading.Thread):
    """Copies the newest complete local checkpoint of one job to the shared store, one upload at a time.

    Watches the local state file (a stat every UPLOAD_POLL_S); the ml room's Checkpointer stays unaware of
    where checkpoints end up. Uploads take at most `busy_share` of the wall time (UPLOAD_BUSY_SHARE): the
    epochs finished meanwhile are skipped, the newest wins. An upload that fails (the store unreachable)
    is logged and retried with the next newer checkpoint or poll; training goes on either way.
    """

    def __init__(
        self,
        location: Location,
        job_id: str,
        local_dir: Path,
        *,
        poll_s: float = UPLOAD_POLL_S,
        busy_share: float = UPLOAD_BUSY_SHARE,
    ):
        super().__init__(daemon=True, name=f"checkpoint-upload-{job_id}")
        self.location, self.job_id, self.local_dir, self.poll_s = location, job_id, Path(local_dir), poll_s
        self.busy_share = busy_share
        self.stopped = threading.Event()
        self.uploaded_version: tuple[int, int] | None = None
        self.done = UploadLog()

    def run(self) -> None:
        rest_s = self.poll_s
        while not self.stopped.wait(rest_s):
            started = time.perf_counter()
            try:
                uploaded = self.upload_newest()
            except Exception:  # the store unreachable: training goes on; the next checkpoint retries
                log.warning("job %s: checkpoint upload failed; retrying with the next one", self.job_id, exc_info=True)
                uploaded = True  # a failed attempt rests as long as a done one
            busy_s = time.perf_counter() - started
            rest_s = max(self.poll_s, busy_s * (1 / self.busy_share - 1)) if uploaded else self.poll_s

    def stop(self) -> None:
        """No more uploads; waits for the one in flight (if any) to end."""
        self.stopped.set()
        self.join()

    def upload_newest(self) -> bool:
        """Upload the local checkpoint if it is newer than the last one uploaded. True if one was."""
        state_path = self.local_dir / STATE_FILE
        with contextlib.ExitStack() as opened:
            try:
                stat = state_path.stat()
                version = (stat.st_mtime_ns, stat.st_ino)  # a new state file is a new inode (written by rename)
                if version == self.uploaded_version:
                    return False
                state_text = state_path.read_text()
                names = checkpoint_files(json.loads(state_text))
                # opened now: a newer checkpoint replacing them meanwhile cannot take them away mid-copy
                files = [opened.enter_context(open(self.local_dir / name, "rb")) for name in names]
            except FileNotFoundError:  # a newer checkpoint replaced this one meanwhile: the next poll takes it
                return False
            started, size = time.perf_counter(), 0
            for name, local_file in zip(names, files, strict=True):
                with self.location.fs.open(self.location.path(self.job_id, name), "wb") as remote:
                    shutil.copyfileobj(local_file, remote, COPY_CHUNK)
                    size += local_file.tell()
        self.location.fs.pipe_file(self.location.path(self.job_id, STATE_FILE), state_text.encode())
        for entry in self.location.fs.ls(self.location.path(self.job_id), detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name not in names and name != STATE_FILE:
                self.location.fs.rm_file(entry)
        self.uploaded_version = version
        elapsed = time.perf_counter() - started
        self.done.seconds.append(elapsed)
        self.done.epochs.append(epochs_done(state_text))
        self.done.bytes.append(size)
        log.info(
            "job %s: checkpoint after %d epochs uploaded (%.1f MB in %.1f s)",
            self.job_id,
            epochs_done(state_text),
            size / 1e6,
            elapsed,
        )
        return True


def local_folders(root: Path) -> dict[str, float]:
    """Every job folder under a local cache root with the time of its newest change."""
    if not root.is_dir():
        return {}
    found = {}
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        try:
            found[entry.name] = newest_change(entry, since=float("inf"))
        except FileNotFoundError:
            continue
    return found
