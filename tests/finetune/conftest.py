"""Fixtures for the domain package's unit tests: tiny class-per-folder datasets and tiny saved models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from finetune.stores.jobs import JobStore
from tests.helpers import make_image


def build_dataset_dir(
    root: Path,
    classes: tuple[str, ...] = ("red", "blue"),
    per_class: int = 8,
    size: int = 40,
) -> Path:
    """`root/<class>/<class>_<n>.png`, each class a colour Pillow knows (with a little noise)."""
    root = Path(root)
    for class_index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            make_image(name, size, seed=class_index * 10_000 + n).save(folder / f"{name}_{n:03d}.png")
    return root


@pytest.fixture
def make_dataset_dir():
    """The helper itself: `make_dataset_dir(root, classes=("red", "blue"), per_class=8, size=40)`."""
    return build_dataset_dir


@dataclass
class FakeResult:
    """Quacks like `training.TrainResult` for the store: what `build_manifest` reads."""

    model: object
    spec: object
    classes: list[str]
    metrics: dict = field(default_factory=lambda: {"accuracy": 0.75})
    warmup_metrics: dict | None = field(default_factory=lambda: {"accuracy": 0.5})
    history: list[dict] = field(
        default_factory=lambda: [
            {
                "phase": "warmup",
                "epoch": 1,
                "loss": 1.0,
                "accuracy": 0.5,
                "val_loss": 1.1,
                "val_accuracy": 0.5,
                "seconds": 0.1,
            },
        ]
    )
    timings: dict = field(default_factory=lambda: {"load_s": 0.1, "warmup_s": 0.2, "finetune_s": 0.0})
    skipped: list = field(default_factory=list)
    num_train: int = 12
    num_validation: int = 4


TINY_SIZE = 32


def tiny_spec(**overrides):
    from finetune.ml.spec import TrainingSpec

    values = {
        "backbone": "mobilenet",
        "alpha": 0.25,
        "weights": "none",
        "image_size": TINY_SIZE,
        "batch_size": 4,
        "head": {"units": 8, "dropout": 0.0},
        "augmentation": None,
        "warmup": {"epochs": 1},
        "finetune": None,
    }
    values.update(overrides)
    return TrainingSpec.model_validate(values)


def colour_classifier():
    """A small Keras model with the classifier's contract (32x32x3 VGG-preprocessed -> softmax over
    blue, green, red), its weights set by hand so that it really tells those colours apart.

    VGG16's preprocessing turns RGB into mean-subtracted BGR, so the channel means of a pure blue,
    green or red image are largest in channel 0, 1 or 2: an identity kernel picks the right class.
    """
    import keras
    import numpy as np

    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(3, activation="softmax", name="predictions")
    model = keras.Model(inputs, dense(pooled))
    dense.set_weights([np.eye(3, dtype=np.float32) * 0.02, np.zeros(3, dtype=np.float32)])
    return model


@pytest.fixture
def fake_result():
    """Builds a FakeResult holding `colour_classifier()` (classes blue/green/red, vgg16 preprocessing)."""

    def make(**kwargs):
        spec = tiny_spec(backbone="vgg16", alpha=None, image_size=TINY_SIZE)
        return FakeResult(model=colour_classifier(), spec=spec, classes=["blue", "green", "red"], **kwargs)

    return make


@pytest.fixture(scope="session")
def factories():
    """This file's builders, for module- or session-scoped fixtures in the test files."""
    from types import SimpleNamespace

    return SimpleNamespace(
        FakeResult=FakeResult,
        colour_classifier=colour_classifier,
        tiny_spec=tiny_spec,
        make_dataset_dir=build_dataset_dir,
    )


@pytest.fixture
def jobs(redis_db):
    """A job store on this session's Redis database, its `finetune:*` keys cleared before and after."""
    store = JobStore.from_url(redis_db)

    def clear():
        keys = list(store.redis.scan_iter(match="finetune:*"))
        if keys:
            store.redis.delete(*keys)

    clear()
    yield store
    clear()
    store.redis.close()
