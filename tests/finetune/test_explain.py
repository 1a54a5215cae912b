"""Grad-CAM: the heatmap of an image with a shape peaks on the shape.

A real-weights MobileNet 0.25 (the shared ImageNet file, placed as an air-gapped host would) learns
"a bright square somewhere" against "plain noise"; the heatmap for `square` on new images must put
more of its mass inside the square's box than the box's share of the image."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune.errors import InvalidSpec

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
SIZE, SIDE = 144, 36  # 144 px: a 4x4 grid at MobileNet's last convolution (224-px weights still load)

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from pathlib import Path
    from PIL import Image
    from finetune.ml.spec import TrainingSpec
    from finetune.ml.training import train
    from finetune.ml.explain import GradCam

    SIZE, SIDE = {size}, {side}

    def make(square, seed):
        rng = np.random.default_rng(seed)
        image = rng.integers(0, 60, (SIZE, SIZE, 3)).astype(np.uint8)
        y, x = (int(v) for v in rng.integers(0, SIZE - SIDE, 2))
        if square:
            image[y:y + SIDE, x:x + SIDE] = 230
        return image, (y, x)

    root = Path(sys.argv[1])
    for name in ("plain", "square"):
        (root / name).mkdir(parents=True)
        for n in range(40):
            Image.fromarray(make(name == "square", n + (1000 if name == "square" else 0))[0]).save(root / name / f"{{n}}.png")
    spec = TrainingSpec.model_validate({{
        "backbone": "mobilenet", "alpha": 0.25, "weights": "imagenet", "image_size": SIZE, "batch_size": 8,
        "head": {{"units": 16, "dropout": 0.0}}, "augmentation": None, "warmup": {{"epochs": 6}},
        "finetune": {{"epochs": 4, "unfreeze_from": 0}}}})
    result = train(spec, dataset_dir=root)
    cam = GradCam(result.model, {{"backbone": "mobilenet", "image_size": SIZE}})
    shares = []
    for seed in range(10):
        image, (y, x) = make(True, 10**6 + seed)
        heatmap, index, _ = cam.explain(image, result.classes.index("square"))
        shares.append(float(heatmap[y:y + SIDE, x:x + SIDE].sum() / max(heatmap.sum(), 1e-12)))
    print(json.dumps({{"accuracy": result.metrics["accuracy"], "shares": shares}}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not WEIGHTS.exists(), reason="needs ../shared/weights")
def test_the_heatmap_of_a_shape_peaks_on_the_shape(tmp_path):
    (tmp_path / "keras" / "models").mkdir(parents=True)
    shutil.copy(WEIGHTS, tmp_path / "keras" / "models" / WEIGHTS.name)
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(size=SIZE, side=SIDE), str(tmp_path / "data")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["accuracy"] == 1.0, figures
    box_share = SIDE * SIDE / (SIZE * SIZE)
    assert np.mean(figures["shares"]) > 1.25 * box_share, figures


def test_explain_refuses_an_unknown_class_and_returns_a_png_of_the_image(tmp_path, factories):
    from finetune.ml.network import build_model
    from finetune.ml.predictor import Predictor
    from finetune.stores.models import ModelStore

    spec = factories.tiny_spec(backbone="vgg16", alpha=None)
    model, _, _ = build_model(spec, num_classes=3)
    store = ModelStore(str(tmp_path / "models"))
    manifest = store.save(factories.FakeResult(model=model, spec=spec, classes=["blue", "green", "red"]))
    predictor = Predictor(store.model_file(manifest["id"]), manifest)
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[..., 2] = 200  # blue
    with pytest.raises(InvalidSpec, match="unknown class"):
        predictor.explain(pixels, "wolf")
    png, explained, probability = predictor.explain(pixels)
    top = int(np.argmax(predictor.predict_pixels(pixels[None])[0]))
    assert explained == ["blue", "green", "red"][top] and 0.0 < probability <= 1.0
    assert Image.open(io.BytesIO(png)).size == (32, 32)
