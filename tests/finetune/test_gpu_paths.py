"""The code that runs only on GPU hosts, run on this CPU: mixed precision (float16 with loss scaling,
bfloat16), MirroredStrategy over two logical CPU devices, and XLA on the train step with the
augmentation. (The worker's GPU claim reaching its job process: tests/integration/test_gpu_claim.py.)

Each training runs the real recipe (`train`) in a fresh interpreter: the dtype policy is process-wide,
and logical devices can only be made before TensorFlow initialises. The child saves the model with the
model store and prints what it saw; this process then loads the model as the API does (`Predictor`, in
float32) and compares its probabilities with the ones the trained model gave in the child.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import make_image

pytestmark = [pytest.mark.gpu_paths, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("red", "blue")
PER_CLASS = 8  # 12 training images, 4 held out

CHILD = r"""
import json, sys
SETUP
import numpy as np
from finetune.ml.backbones import get_backbone
from finetune.ml.devices import DevicePlan
from finetune.ml.spec import TrainingSpec
from finetune.ml.training import recipe
from finetune.stores.models import ModelStore

args = json.loads(sys.argv[1])
if args["jit_compile"]:
    recipe._jit_compile = lambda: True  # what a GPU host gets ("auto"), forced on here
plan = DevicePlan(**args["plan"])
spec = TrainingSpec.model_validate(args["spec"])
events = []
result = recipe.train(spec, dataset_dir=args["dataset"], device_plan=plan,
                      progress=lambda e: events.append([str(e.phase), e.batches]))
model = result.model
optimizer = model.optimizer
inner = getattr(optimizer, "inner_optimizer", optimizer)
pixels = np.load(args["probe"])
preprocess = get_backbone(spec.backbone).preprocess()
probabilities = np.asarray(model(preprocess(pixels.astype("float32")), training=False))
manifest = ModelStore(args["out"]).save(result)
variable = model.trainable_weights[0]
print("RESULT " + json.dumps({
    "model_id": manifest["id"],
    "history": [[row["phase"], row["loss"]] for row in result.history],
    "batches": sorted({b for phase, b in events if phase in ("warmup", "finetune")}),
    "optimizer": type(optimizer).__name__,
    "inner_optimizer": type(inner).__name__,
    "learning_rate": float(np.asarray(inner.learning_rate)),
    "iterations": int(np.asarray(inner.iterations)),
    "loss_scale": float(np.asarray(optimizer.dynamic_scale)) if hasattr(optimizer, "dynamic_scale") else None,
    "jit_compile": bool(model.jit_compile),
    "policy": model.dtype_policy.name,
    "layer_compute_dtypes": sorted({layer.compute_dtype for layer in model.layers[1].layers}),
    "output_dtype": str(probabilities.dtype),
    "variable_type": type(getattr(variable, "value", variable)).__name__,
    "probabilities": probabilities.tolist(),
}))
"""

TWO_LOGICAL_CPUS = """
import tensorflow as tf
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
assert len(tf.config.list_logical_devices("CPU")) == 2
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpu-paths-data")
    for index, colour in enumerate(CLASSES):
        (root / colour).mkdir()
        for n in range(PER_CLASS):
            make_image(colour, 40, seed=index * 1000 + n).save(root / colour / f"{n}.png")
    return root


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    """A red and a blue image at the model's 32 px, as the Predictor feeds them (uint8)."""
    path = tmp_path_factory.mktemp("gpu-paths-probe") / "probe.npy"
    np.save(path, np.stack([np.asarray(make_image(c, 32, seed=77)) for c in CLASSES]).astype(np.uint8))
    return path


def spec(**overrides) -> dict:
    """MobileNet 0.25 on random weights, both phases, one epoch each: every step is what a GPU job runs."""
    values = {
        "backbone": "mobilenet",
        "alpha": 0.25,
        "weights": "none",
        "image_size": 32,
        "batch_size": 4,
        "head": {"units": 8, "dropout": 0.0},
        "augmentation": None,
        "warmup": {"epochs": 1, "optimizer": "rmsprop", "learning_rate": 0.002},
        "finetune": {"epochs": 1, "optimizer": "sgd", "learning_rate": 0.003, "unfreeze_from": 50},
    }
    values.update(overrides)
    return values


def run_recipe(dataset, probe, out, *, plan: dict, spec_values: dict, jit_compile=False, setup="") -> dict:
    args = {
        "plan": plan,
        "spec": spec_values,
        "dataset": str(dataset),
        "probe": str(probe),
        "out": str(out),
        "jit_compile": jit_compile,
    }
    code = CHILD.replace("SETUP", textwrap.dedent(setup))
    completed = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=900,  # a hang guard
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def served_probabilities(out: Path, model_id: str, probe: Path) -> np.ndarray:
    """The saved model as the API loads it (this process: float32 policy, no strategy)."""
    import keras

    from finetune.ml.predictor import Predictor
    from finetune.stores.models import ModelStore

    assert keras.mixed_precision.global_policy().name == "float32"
    store = ModelStore(str(out))
    predictor = Predictor(store.model_file(model_id), store.get(model_id))
    probabilities = predictor.predict_pixels(np.load(probe))
    assert probabilities.dtype == np.float32
    return probabilities


def assert_trained_both_phases(seen: dict, *, batches: int) -> None:
    assert [phase for phase, _ in seen["history"]] == ["warmup", "finetune"]
    assert all(np.isfinite(loss) for _, loss in seen["history"]), seen["history"]
    assert seen["batches"] == [batches]
    assert seen["iterations"] == batches  # every finetune step applied (none skipped for a non-finite gradient)


def assert_served_like_trained(seen: dict, out: Path, probe: Path, *, tolerance: float) -> None:
    served = served_probabilities(out, seen["model_id"], probe)
    trained = np.asarray(seen["probabilities"], dtype=np.float32)
    assert seen["output_dtype"] == "float32"  # the softmax runs in float32 under every policy
    assert np.allclose(served.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(served, trained, atol=tolerance), (served, trained)


def test_mixed_float16_trains_with_loss_scaling_and_serves_in_float32(dataset, probe, tmp_path):
    seen = run_recipe(dataset, probe, tmp_path, plan={"precision": "mixed_float16"}, spec_values=spec())
    assert seen["policy"] == "mixed_float16"
    assert "float16" in seen["layer_compute_dtypes"]
    assert seen["optimizer"] == "LossScaleOptimizer" and seen["inner_optimizer"] == "SGD"
    assert seen["loss_scale"] is not None and 1.0 <= seen["loss_scale"] < float("inf")
    assert seen["learning_rate"] == pytest.approx(0.003)
    assert_trained_both_phases(seen, batches=3)  # 12 images, batch 4
    assert_served_like_trained(seen, tmp_path, probe, tolerance=1e-3)


def test_mixed_bfloat16_trains_and_serves_in_float32(dataset, probe, tmp_path):
    seen = run_recipe(dataset, probe, tmp_path, plan={"precision": "mixed_bfloat16"}, spec_values=spec())
    assert seen["policy"] == "mixed_bfloat16"
    assert "bfloat16" in seen["layer_compute_dtypes"]
    assert seen["optimizer"] == "SGD" and seen["loss_scale"] is None  # bfloat16 needs no loss scaling
    assert_trained_both_phases(seen, batches=3)
    assert_served_like_trained(seen, tmp_path, probe, tolerance=1e-3)


def test_a_job_under_mirrored_strategy_over_two_logical_cpus(dataset, probe, tmp_path):
    """Both phases mirrored over two devices (with bfloat16, as on several Ampere GPUs). `batch_size` is
    per replica: each step takes batch_size x replicas images (12 images at 2 x 2 = 3 steps an epoch,
    not 6), and the learning rate is the spec's as given, not scaled."""
    plan = {
        "strategy": "mirrored",
        "replicas": 2,
        "precision": "mixed_bfloat16",
        "devices": ["/device:CPU:0", "/device:CPU:1"],
    }
    seen = run_recipe(dataset, probe, tmp_path, plan=plan, spec_values=spec(batch_size=2), setup=TWO_LOGICAL_CPUS)
    assert seen["variable_type"] == "MirroredVariable"
    assert seen["learning_rate"] == pytest.approx(0.003)
    assert_trained_both_phases(seen, batches=3)
    assert_served_like_trained(seen, tmp_path, probe, tolerance=1e-3)


def test_jit_compiled_train_step_with_the_augmentation(dataset, probe, tmp_path):
    """XLA on the train step (a GPU host's "auto"), fed by the augmented stream: the seed's augmentation."""
    seen = run_recipe(
        dataset, probe, tmp_path, plan={}, spec_values=spec(augmentation={}, warmup={"epochs": 1}), jit_compile=True
    )
    assert seen["jit_compile"] is True
    assert seen["policy"] == "float32"
    assert_trained_both_phases(seen, batches=3)
    assert_served_like_trained(seen, tmp_path, probe, tolerance=1e-5)
