import subprocess
import sys

import pytest

from finetune.ml.devices import DevicePlan, plan_devices, precision_for


def gpu(cc, name="NVIDIA Test"):
    return {"device_name": name, "compute_capability": cc}


def test_no_gpu_is_default_float32():
    assert plan_devices([]) == DevicePlan("default", 1, "float32")


@pytest.mark.parametrize(
    "cc, precision",
    [
        ((9, 0), "mixed_bfloat16"),
        ((8, 6), "mixed_bfloat16"),
        ((8, 0), "mixed_bfloat16"),
        ((7, 5), "mixed_float16"),
        ((7, 0), "mixed_float16"),
        ((6, 1), "float32"),
        (None, "float32"),
    ],
)
def test_one_gpu_uses_no_strategy_and_mixed_precision_by_capability(cc, precision):
    details = gpu(cc) if cc else {"device_name": "unknown"}
    assert plan_devices([details]) == DevicePlan("default", 1, precision)


def test_several_gpus_mirror_with_one_replica_each():
    plan = plan_devices([gpu((8, 0)), gpu((8, 0)), gpu((8, 0)), gpu((8, 0))])
    assert plan == DevicePlan("mirrored", 4, "mixed_bfloat16")


def test_mixed_gpus_take_the_weakest_precision():
    assert plan_devices([gpu((8, 0)), gpu((7, 0))]).precision == "mixed_float16"
    assert plan_devices([gpu((8, 0)), gpu((6, 0))]).precision == "float32"
    assert plan_devices([gpu((8, 0)), {"device_name": "?"}]).precision == "float32"


def test_mixed_precision_can_be_turned_off():
    assert plan_devices([gpu((9, 0))], mixed_precision=False).precision == "float32"
    assert plan_devices([gpu((9, 0))] * 2, mixed_precision=False) == DevicePlan("mirrored", 2, "float32")


def test_malformed_capability_counts_as_unknown():
    assert plan_devices([gpu("8.0")]).precision == "float32"
    assert precision_for([]) == "float32"


def test_plan_is_validated():
    with pytest.raises(ValueError):
        DevicePlan(strategy="tpu")
    with pytest.raises(ValueError):
        DevicePlan(precision="float16")
    with pytest.raises(ValueError):
        DevicePlan(replicas=0)


def test_import_does_not_load_tensorflow():
    code = "import sys, finetune.ml.devices; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_tensorflow_side_on_this_host():
    import keras

    from finetune.ml.devices import apply_precision, detect_gpus, make_strategy

    gpus = detect_gpus()
    assert all("name" in g for g in gpus)
    plan = plan_devices(gpus)
    strategy = make_strategy(plan)
    assert strategy.num_replicas_in_sync == plan.replicas
    previous = keras.mixed_precision.global_policy()
    try:
        apply_precision(DevicePlan(precision="mixed_float16"))
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy(previous)
