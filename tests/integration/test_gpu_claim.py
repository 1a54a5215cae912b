"""The worker's GPU claim reaches its job process: a real Celery worker started with two visible GPUs
and a GPU_LOCK_DIR, one of the GPUs already claimed (by this test, as another worker would), runs a
job whose process has CUDA_VISIBLE_DEVICES set to the free GPU alone. On this CPU host TensorFlow then
finds no GPU and the job trains on the CPU: the claim, not CUDA, is what is tested."""

from __future__ import annotations

import os

import psutil
import pytest

from finetune.launcher import start_worker
from tests.integration.reliability_support import (
    FINAL,
    submit_job,
    tiny_spec,
    upload_archive,
    wait_for,
    wait_for_job,
)
from worker.gpu import claim_gpu

pytestmark = [pytest.mark.gpu_paths, pytest.mark.integration, pytest.mark.slow]

HANG_GUARD_S = 300


def job_processes(worker_pid: int, job_id: str) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(worker_pid).children(recursive=True):
        try:
            if "finetune.execution.runner" in child.cmdline() and job_id in child.cmdline():
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_the_worker_claims_a_free_gpu_and_its_job_process_sees_only_that_one(
    live_service, redis_db, tmp_path, tiny_dataset_zip
):
    locks = tmp_path / "gpu-locks"
    taken, handle = claim_gpu(locks, ["3"])  # another worker holds GPU 3
    env = {**live_service.env, "REDIS_URL": redis_db, "CUDA_VISIBLE_DEVICES": "3,5", "GPU_LOCK_DIR": str(locks)}
    worker = start_worker(env=env, log_path=tmp_path / "worker.log")
    try:
        # the worker took the free GPU: its lock names the worker's process
        assert (locks / "gpu-5.lock").read_text().strip() == str(worker.pid)
        with live_service.extra_api(tmp_path / "api", REDIS_URL=redis_db) as client:
            dataset = upload_archive(client, "tiny.zip", tiny_dataset_zip.read_bytes())
            assert dataset.status_code == 201, dataset.text
            job = submit_job(client, tiny_spec(dataset.json()["id"], warmup=1, finetune=500))
            running = wait_for_job(
                client,
                job["id"],
                until=lambda j: j["phase"] in ("warmup", "finetune") or j["status"] in FINAL,
                timeout=HANG_GUARD_S,
                diagnostics=worker.log_tail,
            )
            assert running["status"] == "running", running
            (process,) = wait_for(
                lambda: job_processes(worker.pid, job["id"]), timeout=HANG_GUARD_S, what="the job process"
            )
            assert process.environ().get("CUDA_VISIBLE_DEVICES") == "5"
            assert os.environ.get("CUDA_VISIBLE_DEVICES") != "5"  # the claim changed the worker's env, not ours
            assert client.post(f"/jobs/{job['id']}/cancel").status_code == 200
            done = wait_for_job(client, job["id"], timeout=HANG_GUARD_S, diagnostics=worker.log_tail)
            assert done["status"] == "cancelled", done
    finally:
        worker.stop()
        handle.close()
    # the kernel dropped the worker's lock when it exited: GPU 5 can be claimed again
    gpu, again = claim_gpu(locks, ["5"])
    assert gpu == "5"
    again.close()
    assert taken == "3"
