"""One GPU per worker when several workers share a host.

Compose's `--scale worker=N` gives every replica the same device reservation. Each worker
therefore sees all of the host's GPUs and claims one for itself by taking an exclusive lock on
`GPU_LOCK_DIR/gpu-<index>.lock` (a folder on a volume the replicas share); its job processes
inherit `CUDA_VISIBLE_DEVICES=<index>`. The kernel drops the lock when the worker exits, however
it exits, so a restarted worker can claim the GPU again.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
from pathlib import Path
from typing import IO

log = logging.getLogger("worker.gpu")


class NoFreeGpu(RuntimeError):
    pass


def visible_gpus(environ: dict | None = None) -> list[str]:
    """GPU indices this process may use: `CUDA_VISIBLE_DEVICES` when set, else what nvidia-smi lists."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [gpu.strip() for gpu in environ["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip()]
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listing.splitlines() if line.strip()]


def claim_gpu(lock_dir: str | Path, gpus: list[str]) -> tuple[str, IO]:
    """The first GPU of `gpus` whose lock is free, and the open lock file to keep while it is used."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    for gpu in gpus:
        handle = open(lock_dir / f"gpu-{gpu}.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return gpu, handle
    raise NoFreeGpu(f"every GPU ({', '.join(gpus)}) is claimed by another worker; run at most {len(gpus)}")


def pin_one_gpu(lock_dir: str | None) -> IO | None:
    """With a lock folder and more than one visible GPU, claim one and make it this process's only GPU."""
    if not lock_dir:
        return None
    gpus = visible_gpus()
    if len(gpus) <= 1:
        return None
    gpu, handle = claim_gpu(lock_dir, gpus)
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    log.info("this worker's jobs use GPU %s (of %s)", gpu, ", ".join(gpus))
    return handle
