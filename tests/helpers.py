"""Test data generators: small colour images and dataset archives, classes told apart by colour."""

from __future__ import annotations

import importlib.util
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor

Color = str | tuple[int, int, int]


def load_script(path: Path):
    """A script outside the packages (scripts/*.py) imported as a module named after its file."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_image(color: Color, size: int = 40, *, noise: float = 12.0, seed: int = 0) -> Image.Image:
    rgb = ImageColor.getrgb(color) if isinstance(color, str) else color
    rng = np.random.default_rng(seed)
    pixels = np.asarray(rgb, dtype=np.float32) + rng.normal(0.0, noise, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_image_bytes(color: Color, size: int = 40, fmt: str = "PNG", *, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    make_image(color, size, seed=seed).save(buffer, format=fmt)
    return buffer.getvalue()


def make_dataset_zip(
    path: Path,
    classes: tuple[str, ...] = ("red", "blue"),
    per_class: int = 8,
    size: int = 40,
) -> Path:
    """A zip of `<class>/<class>_<n>.png`; each class name must be a colour name Pillow knows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for class_index, name in enumerate(classes):
            for n in range(per_class):
                image = make_image_bytes(name, size, seed=class_index * 10_000 + n)
                archive.writestr(f"{name}/{name}_{n:03d}.png", image)
    return path


# A spec that really learns the colour classes above, in seconds on a CPU. VGG16 on random weights
# ("none": no download) keeps red and blue apart in its features, so a head trained on them for a few
# epochs tells the classes apart (MobileNet's random features are ~1e-18 for every image: nothing to
# learn). No augmentation and no finetune: the warmup trains the head on features computed once.
LEARNABLE_SPEC: dict = {
    "backbone": "vgg16",
    "weights": "none",
    "image_size": 32,
    "batch_size": 4,
    "head": {"units": 8, "dropout": 0.0},
    "augmentation": None,
    "warmup": {"epochs": 12, "optimizer": "adam", "learning_rate": 0.01},
    "finetune": None,
}


def learnable_spec(dataset_id: str | None = None, **overrides) -> dict:
    spec = {**LEARNABLE_SPEC, **overrides}
    if dataset_id is not None:
        spec["dataset_id"] = dataset_id
    return spec


def probabilities(result: dict) -> dict[str, float]:
    """{label: probability} of one entry of a /predict (or `finetune predict`) answer's `results`."""
    return {p["label"]: p["probability"] for p in result["predictions"]}


def top_label(result: dict) -> str:
    return max(result["predictions"], key=lambda p: p["probability"])["label"]


def predictor_results(model_file: str | Path, manifest: dict, images: list[tuple[str, bytes]]) -> list[dict]:
    """What the Python `Predictor` gives for `images` (name, bytes) with a model file: every class."""
    from finetune.ml.predictor import ImageInput, Predictor

    predictor = Predictor(Path(model_file), manifest)
    inputs = [ImageInput(name=name, data=data) for name, data in images]
    return predictor.predict(inputs, top_k=len(manifest["classes"]))


def reference_results(model_dir: str | Path, model_id: str, images: list[tuple[str, bytes]]) -> list[dict]:
    """`predictor_results` for a model of a local model store."""
    from finetune.stores.models import ModelStore

    models = ModelStore(str(model_dir))
    return predictor_results(models.model_file(model_id), models.get(model_id), images)


def assert_same_probabilities(got: list[dict], expected: list[dict], *, tolerance: float = 1e-5) -> None:
    """Results (in order) with the same file names and, class by class, the same probabilities."""
    assert [r["filename"] for r in got] == [r["filename"] for r in expected]
    for mine, theirs in zip(got, expected):
        mine_p, theirs_p = probabilities(mine), probabilities(theirs)
        assert set(mine_p) == set(theirs_p), (mine, theirs)
        for label, value in theirs_p.items():
            assert abs(mine_p[label] - value) <= tolerance, (mine["filename"], label, mine_p[label], value)
