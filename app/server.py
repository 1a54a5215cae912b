"""`python -m app.server`: the API under uvicorn, in API_WORKERS processes sharing one port.

Each process runs its own event loop, models and micro-batcher. One process was the limit of
/predict: with 8 clients on 2 cores its event loop (HTTP, multipart, routing, JSON, all under one
GIL) answered ~215 requests/s while the forward passes left a core half idle; two processes with
one forward pass each answered ~400 (bench/serving.py, side by side; BENCHMARKS.md). The price is
memory: every process loads the models it is asked for (MODEL_CACHE_SIZE each).

With more than one process, they share a folder made here for this server under CACHE_DIR/api-servers
(removed when it stops):
Prometheus values live in its files (`PROMETHEUS_MULTIPROC_DIR`), so `GET /metrics` on any process
reports them all, and a change count (`API_CHANGES_FILE`) makes a model deleted or an alias moved
through one process seen by all of them at their next request.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import uvicorn

from app.metrics import MULTIPROCESS_DIR_ENV, pid_alive
from finetune.serving.changes import SharedChangeCounter
from finetune.settings import get_settings

APP = "app.main:app"


def remove_dead_servers_folders(root: Path) -> None:
    """The shared folders of servers killed before they could remove theirs (named by their pid)."""
    for folder in root.glob("*-*"):
        pid = folder.name.split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def stop_resource_tracker() -> None:
    """uvicorn's worker processes start multiprocessing's resource tracker, which Python 3.11 leaves to
    exit after this process: an orphan then, a zombie for good where PID 1 reaps none (a container whose
    PID 1 is this server, or a sandbox's). Stopped and reaped here (its `_stop`, what CPython's own
    tests call: there is no public way)."""
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m app.server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: every interface)")
    parser.add_argument("--port", type=int, default=settings.port, help="default: $PORT, else 8000")
    parser.add_argument(
        "--workers",
        type=int,
        default=settings.api_workers,
        help="API processes (default: $API_WORKERS, else the cores)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["API_WORKERS"] = str(args.workers)  # each process shares the cores out by it (PREDICT_CONCURRENCY)
    if args.workers == 1:
        uvicorn.run(APP, host=args.host, port=args.port)
        return
    root = get_settings().cache.api_servers
    root.mkdir(parents=True, exist_ok=True)
    remove_dead_servers_folders(root)
    shared = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))
    (shared / "metrics").mkdir()
    SharedChangeCounter(shared / "model-changes").close()  # created before any process maps it
    # read by prometheus_client and by Settings in each process uvicorn spawns
    os.environ[MULTIPROCESS_DIR_ENV] = str(shared / "metrics")
    os.environ["API_CHANGES_FILE"] = str(shared / "model-changes")
    try:
        uvicorn.run(APP, host=args.host, port=args.port, workers=args.workers)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        stop_resource_tracker()


if __name__ == "__main__":
    main()
