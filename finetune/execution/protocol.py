"""What the worker and its job process agree on: how the process is started, how a worker is named
in a job's heartbeat, and what the process's exit code means."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import NoReturn

# The job reached a final state in this process (or was already final).
EXIT_DONE = 0
# Another live worker holds the job (a duplicate delivery): this process did nothing.
EXIT_OWNED_ELSEWHERE = 3
# What a run (a job's, a batch's) answers when another live worker holds it: this process did nothing.
OWNED = "owned"
RUNNER_MODULE = "finetune.execution.runner"


def runner_command(job_id: str) -> list[str]:
    """The command line of the process that runs one job."""
    return [sys.executable, "-m", RUNNER_MODULE, job_id]


def worker_id(pid: int | None = None) -> str:
    """The name a job process writes into its job's heartbeat: `host:pid` (this process by default)."""
    return f"{socket.gethostname()}:{pid if pid is not None else os.getpid()}"


def process_main(argv: list[str] | None, *, module: str, kind: str, run: Callable[[str], str]) -> int:
    """The `main` of a process that runs one record (`python -m <module> ID`): its exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print(f"usage: python -m {module} {kind.upper()}_ID", file=sys.stderr)
        return 2
    status = run(args[0])
    logging.getLogger(module).info("%s %s ended %s", kind, args[0], status)
    return EXIT_OWNED_ELSEWHERE if status == OWNED else EXIT_DONE


def exit_now(code: int) -> NoReturn:
    """Flush the logs and leave, skipping TensorFlow's slow teardown: the record's state is already in Redis."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# The Celery task that runs a job: sent by the API, registered by the worker.
RUN_JOB_TASK = "finetune.run_job"
# The queue the workers consume and the API sends to.
JOB_QUEUE = "finetune"


# --- exports (issue 13) -------------------------------------------------------------------------

# The Celery task that builds one export of a model: sent by the API, registered by the worker. It goes
# to JOB_QUEUE, so a worker runs jobs and exports one at a time, in the order they were asked for.
BUILD_EXPORT_TASK = "finetune.build_export"
EXPORTER_MODULE = "finetune.execution.exporter"


def exporter_command(model_id: str, fmt: str, build_id: str) -> list[str]:
    """The command line of the process that builds one export (never the API's or the worker's own)."""
    return [sys.executable, "-m", EXPORTER_MODULE, model_id, fmt, build_id]


# --- batch predictions (issue 16) ---------------------------------------------------------------

# The Celery task that runs one batch prediction: sent by the API and the reaper, registered by the
# worker. It goes to JOB_QUEUE: a worker runs jobs, exports and batches one at a time, in order.
RUN_BATCH_TASK = "finetune.run_batch"
BATCH_RUNNER_MODULE = "finetune.execution.batch_runner"


def batch_runner_command(batch_id: str) -> list[str]:
    """The command line of the process that runs one batch."""
    return [sys.executable, "-m", BATCH_RUNNER_MODULE, batch_id]
