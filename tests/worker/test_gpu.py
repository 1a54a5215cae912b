import multiprocessing
import os

import pytest

from worker.gpu import NoFreeGpu, claim_gpu, pin_one_gpu, visible_gpus


def test_visible_gpus_follow_cuda_visible_devices():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0, 2"}) == ["0", "2"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def _claim_in_child(lock_dir, gpus, queue):
    try:
        gpu, _ = claim_gpu(lock_dir, gpus)
        queue.put(gpu)
    except NoFreeGpu as error:
        queue.put(f"none: {error}")


def test_each_worker_process_claims_a_different_gpu_and_a_surplus_worker_gets_none(tmp_path):
    held = [claim_gpu(tmp_path, ["0", "1", "2"]) for _ in range(2)]
    assert [gpu for gpu, _ in held] == ["0", "1"]
    queue = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(
        target=_claim_in_child, args=(tmp_path, ["0", "1", "2"], queue)
    )
    child.start()
    child.join(120)  # hang guards, both
    assert queue.get(timeout=120) == "2"
    with pytest.raises(NoFreeGpu, match="at most 2"):
        claim_gpu(tmp_path, ["0", "1"])


def test_a_released_gpu_can_be_claimed_again(tmp_path):
    gpu, handle = claim_gpu(tmp_path, ["0"])
    handle.close()
    assert claim_gpu(tmp_path, ["0"])[0] == "0"


def test_pinning_sets_cuda_visible_devices_only_with_several_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert pin_one_gpu(str(tmp_path)) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert pin_one_gpu(None) is None
    handle = pin_one_gpu(str(tmp_path))
    assert handle is not None and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
