"""The two-phase recipe on tiny generated datasets: history, evaluations, progress, cancel, resume."""

from __future__ import annotations

import functools
import json

import keras
import numpy as np
import pytest

import finetune.ml.training.recipe as training
from finetune.errors import JobCancelled
from finetune.ml.checkpoint import STATE_FILE, Checkpointer, TrainingState
from finetune.ml.pipeline import decode_dataset, make_dataset
from finetune.ml.spec import TrainingSpec
from finetune.ml.training.recipe import ProgressEvent, TrainResult, train

HISTORY_KEYS = {"phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"}


def tiny(**overrides) -> TrainingSpec:
    """MobileNet alpha 0.25 with random weights at 32 px, batch 8, one epoch per phase."""
    values = {
        "backbone": "mobilenet",
        "alpha": 0.25,
        "weights": "none",
        "image_size": 32,
        "batch_size": 8,
        "head": {"units": 16},
        "warmup": {"epochs": 1},
        "finetune": {"epochs": 1},
    }
    values.update(overrides)
    return TrainingSpec.model_validate(values)


class CancelAfter:
    """A should_cancel that answers True from its `n`-th call on."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, factories):
    """16 images, 2 classes: 12 train and 4 validation (2 batches of 8 per epoch)."""
    return factories.make_dataset_dir(tmp_path_factory.mktemp("tiny"), per_class=8, size=40)


@pytest.fixture(scope="module")
def two_phase(dataset):
    events: list[ProgressEvent] = []
    result = train(tiny(), dataset_dir=dataset, progress=events.append)
    return result, events


def assert_unfrozen_from(backbone, index: int, batchnorm: str) -> None:
    """Every layer that has weights is trainable exactly when it comes at or after `index`
    (BatchNorm layers only with batchnorm="trainable").

    (A reloaded model's InputLayer comes back trainable; it has no weights, so that means nothing.)
    """
    for position, layer in enumerate(backbone.layers):
        if layer.weights:
            frozen_batchnorm = batchnorm == "frozen" and isinstance(layer, keras.layers.BatchNormalization)
            assert layer.trainable is (position >= index and not frozen_batchnorm), (position, layer.name)
    later = {id(w) for layer in backbone.layers[index:] for w in layer.trainable_weights}
    assert later and {id(w) for w in backbone.trainable_weights} == later


def phases(events) -> list[str]:
    """The phases in order of first appearance."""
    seen: list[str] = []
    for event in events:
        if event.phase not in seen or seen[-1] != event.phase:
            seen.append(event.phase)
    return seen


# --- a two-phase run ----------------------------------------------------------------------


@pytest.mark.slow
def test_history_has_warmup_then_finetune_rows(two_phase):
    result, _ = two_phase
    assert isinstance(result, TrainResult)
    assert [(row["phase"], row["epoch"]) for row in result.history] == [("warmup", 1), ("finetune", 1)]
    for row in result.history:
        assert set(row) == HISTORY_KEYS
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["val_accuracy"] <= 1.0
        assert row["loss"] > 0 and row["val_loss"] > 0 and row["seconds"] > 0


@pytest.mark.slow
def test_both_evaluations_are_present_with_the_right_shape(two_phase):
    result, _ = two_phase
    assert result.classes == ["blue", "red"]
    assert (result.num_train, result.num_validation) == (12, 4)
    for metrics in (result.warmup_metrics, result.metrics):
        matrix = np.array(metrics["confusion_matrix"])
        assert matrix.shape == (2, 2)
        assert matrix.sum() == result.num_validation
        assert matrix.sum(axis=1).tolist() == [2, 2]  # stratified: 2 validation images per class
        assert set(metrics["report"]["per_class"]) == {"blue", "red"}
        assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / 4)


@pytest.mark.slow
def test_final_validation_accuracy_matches_the_last_history_row(two_phase):
    result, _ = two_phase
    assert result.metrics["accuracy"] == pytest.approx(result.history[-1]["val_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_timings_are_reported(two_phase):
    result, _ = two_phase
    timings = result.timings
    assert set(timings) >= {"load_s", "warmup_s", "finetune_s", "images_per_s"}
    assert timings["load_s"] > 0 and timings["warmup_s"] > 0 and timings["finetune_s"] > 0
    assert timings["images_per_s"]["warmup"] > 0 and timings["images_per_s"]["finetune"] > 0


@pytest.mark.slow
def test_progress_goes_through_every_phase(two_phase):
    _, events = two_phase
    assert phases(events) == ["loading", "warmup", "evaluating", "finetune", "evaluating"]
    assert all(isinstance(event, ProgressEvent) for event in events)


@pytest.mark.slow
def test_progress_reports_batches_and_epoch_ends(two_phase):
    _, events = two_phase
    for phase in ("warmup", "finetune"):
        batch_events = [e for e in events if e.phase == phase and e.metrics is None and e.batch > 0]
        assert [(e.epoch, e.epochs, e.batch, e.batches) for e in batch_events] == [(1, 1, 1, 2), (1, 1, 2, 2)]
        [epoch_end] = [e for e in events if e.phase == phase and e.metrics is not None]
        assert epoch_end.epoch == 1 and epoch_end.metrics["phase"] == phase
        assert epoch_end.history[-1] == epoch_end.metrics
    finetune_end = [e for e in events if e.phase == "finetune" and e.metrics][0]
    assert [row["phase"] for row in finetune_end.history] == ["warmup", "finetune"]


@pytest.mark.slow
def test_after_training_only_the_layers_from_the_unfreeze_index_are_trainable(two_phase):
    result, _ = two_phase
    backbone = result.model.layers[1]
    index = result.spec.unfreeze_index
    assert backbone.layers[index].name == "conv_dw_13"
    assert [layer.trainable for layer in backbone.layers[:index]] == [False] * index
    assert result.spec.finetune.batchnorm == "trainable"  # mobilenet's default (issue 18)
    assert all(layer.trainable for layer in backbone.layers[index:])
    assert_unfrozen_from(backbone, index, "trainable")


@pytest.mark.slow
def test_the_trained_model_predicts_probabilities(two_phase):
    result, _ = two_phase
    out = np.asarray(result.model.predict(np.zeros((3, 32, 32, 3), np.float32), verbose=0))
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


# --- variants ----------------------------------------------------------------------------


@pytest.mark.slow
def test_finetune_null_stops_after_warmup(dataset):
    events = []
    result = train(tiny(warmup={"epochs": 2}, finetune=None), dataset_dir=dataset, progress=events.append)
    assert [(row["phase"], row["epoch"]) for row in result.history] == [("warmup", 1), ("warmup", 2)]
    assert "finetune" not in phases(events)
    assert result.timings["finetune_s"] == 0.0
    assert result.timings["images_per_s"]["finetune"] is None
    assert result.warmup_metrics == result.metrics
    assert not any(layer.trainable_weights for layer in result.model.layers[1].layers)


@pytest.mark.slow
def test_no_augmentation_trains_the_head_on_cached_features(dataset, monkeypatch):
    compiled = []
    real_compile = training.compile_for

    def spy(model, phase, **kwargs):
        compiled.append(model.name)
        return real_compile(model, phase, **kwargs)

    monkeypatch.setattr(training, "compile_for", spy)
    events = []
    result = train(tiny(augmentation=None), dataset_dir=dataset, progress=events.append)
    # the feature-cache path compiles and fits the head alone for the warmup, the whole model after
    assert compiled == ["head", "classifier"]
    assert [(row["phase"], row["epoch"]) for row in result.history] == [("warmup", 1), ("finetune", 1)]
    assert all(set(row) == HISTORY_KEYS for row in result.history)
    assert result.timings["images_per_s"]["warmup"] > 0
    assert np.array(result.warmup_metrics["confusion_matrix"]).sum() == 4
    warmup_batches = [e for e in events if e.phase == "warmup" and e.batch > 0 and e.metrics is None]
    assert [e.batches for e in warmup_batches] == [2, 2]


@pytest.mark.slow
def test_no_augmentation_learns_the_colours(dataset):
    """A random-weight VGG16 (no BatchNorm, so its features do not vanish) still separates red from
    blue once the head trains on the cached features: images and labels reach the model together."""
    spec = tiny(
        backbone="vgg16",
        alpha=None,
        augmentation=None,
        finetune=None,
        seed=0,
        warmup={"epochs": 30, "optimizer": "adam", "learning_rate": 0.001},
        head={"units": 16, "dropout": 0.0},
    )
    result = train(spec, dataset_dir=dataset)
    assert result.history[-1]["accuracy"] >= 0.9
    assert result.metrics["accuracy"] >= 0.75


@pytest.mark.slow
def test_the_same_spec_trains_the_same_weights_and_history(dataset):
    """`seed` seeds the initial weights and dropout as well as the split and shuffle."""
    spec = tiny(augmentation=None, finetune=None, warmup={"epochs": 2})
    first, second = train(spec, dataset_dir=dataset), train(spec, dataset_dir=dataset)
    for a, b in zip(first.history, second.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    for a, b in zip(first.model.get_weights(), second.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    other = train(spec.model_copy(update={"seed": 7}), dataset_dir=dataset)
    assert other.history[0]["loss"] != pytest.approx(first.history[0]["loss"], rel=1e-5)


# --- cancel ------------------------------------------------------------------------------


@pytest.mark.slow
def test_should_cancel_stops_training_with_job_cancelled(dataset):
    events = []
    cancel = CancelAfter(3)
    with pytest.raises(JobCancelled):
        train(tiny(warmup={"epochs": 3}), dataset_dir=dataset, progress=events.append, should_cancel=cancel)
    assert cancel.calls == 3  # asked after every batch, stopped at the first True
    batches = [(e.epoch, e.batch) for e in events if e.phase == "warmup" and e.batch > 0 and e.metrics is None]
    assert batches == [(1, 1), (1, 2)]
    assert not any(e.phase == "finetune" for e in events)


@pytest.mark.slow
def test_a_should_cancel_that_raises_stops_training(dataset):
    def boom() -> bool:
        raise JobCancelled("told to stop")

    with pytest.raises(JobCancelled, match="told to stop"):
        train(tiny(augmentation=None), dataset_dir=dataset, should_cancel=boom)


# --- checkpoint and resume ---------------------------------------------------------------


def read_state(directory) -> dict:
    return json.loads((directory / STATE_FILE).read_text())


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_checkpoint(dataset, tmp_path):
    checkpoints = tmp_path / "checkpoint"
    spec = tiny(warmup={"epochs": 2}, finetune={"epochs": 2})
    # 2 batches an epoch: calls 1-4 are the warmup's, call 5 is the finetune's first batch
    with pytest.raises(JobCancelled):
        train(spec, dataset_dir=dataset, should_cancel=CancelAfter(5), checkpoint_dir=checkpoints)
    state = read_state(checkpoints)
    assert (state["phase"], state["epoch"], state["trainee"]) == ("warmup", 2, "model")
    assert [(row["phase"], row["epoch"]) for row in state["history"]] == [("warmup", 1), ("warmup", 2)]
    assert (checkpoints / state["model_file"]).is_file()
    warmup_rows = state["history"]

    # second attempt: the warmup is not run again; cancelled in the finetune's second epoch
    events = []
    with pytest.raises(JobCancelled):
        train(
            spec, dataset_dir=dataset, should_cancel=CancelAfter(3), checkpoint_dir=checkpoints, progress=events.append
        )
    assert not any(e.phase == "warmup" and e.batch > 0 for e in events)
    state = read_state(checkpoints)
    assert (state["phase"], state["epoch"], state["trainee"]) == ("finetune", 1, "model")
    assert state["history"][:2] == warmup_rows
    assert [(row["phase"], row["epoch"]) for row in state["history"]] == [("warmup", 1), ("warmup", 2), ("finetune", 1)]
    assert state["warmup_metrics"] is not None
    assert sorted(p.name for p in checkpoints.glob("trainee-*.keras")) == ["trainee-finetune-1.keras"]

    # third attempt: runs the one finetune epoch left and finishes
    events = []
    result = train(spec, dataset_dir=dataset, checkpoint_dir=checkpoints, progress=events.append)
    assert [(row["phase"], row["epoch"]) for row in result.history] == [
        ("warmup", 1),
        ("warmup", 2),
        ("finetune", 1),
        ("finetune", 2),
    ]
    assert result.history[:3] == state["history"]
    assert result.warmup_metrics == state["warmup_metrics"]
    finetune_batches = [(e.epoch, e.batch) for e in events if e.phase == "finetune" and e.batch and not e.metrics]
    assert finetune_batches == [(2, 1), (2, 2)]
    assert not any(e.phase == "warmup" for e in events)
    assert read_state(checkpoints)["epoch"] == 2
    # the model came back from the checkpoint with its trainable flags
    assert_unfrozen_from(result.model.layers[1], spec.unfreeze_index, spec.finetune.batchnorm)
    assert np.array(result.metrics["confusion_matrix"]).sum() == 4


@pytest.mark.slow
def test_a_finished_checkpoint_is_not_trained_again(dataset, tmp_path):
    checkpoints = tmp_path / "checkpoint"
    spec = tiny(augmentation=None, finetune=None)
    first = train(spec, dataset_dir=dataset, checkpoint_dir=checkpoints)
    events = []
    again = train(spec, dataset_dir=dataset, checkpoint_dir=checkpoints, progress=events.append)
    assert again.history == first.history
    assert not any(e.batch > 0 for e in events)


def test_checkpointer_load_of_an_empty_folder_is_none(tmp_path):
    assert Checkpointer(tmp_path / "none").load() is None


def test_checkpointer_keeps_only_the_latest_model(tmp_path, factories):
    checkpointer = Checkpointer(tmp_path / "ck")
    model = factories.colour_classifier()
    checkpointer.save(model, TrainingState(phase="warmup", epoch=1, history=[], trainee="model"))
    checkpointer.save(model, TrainingState(phase="warmup", epoch=2, history=[{"epoch": 1}], trainee="model"))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [STATE_FILE, "trainee-warmup-2.keras"]
    resumed = checkpointer.load()
    state, loaded = resumed.state, resumed.trainee
    assert state == TrainingState(phase="warmup", epoch=2, history=[{"epoch": 1}], trainee="model")
    assert read_state(tmp_path / "ck")["model_file"] == "trainee-warmup-2.keras"
    x = np.random.default_rng(0).uniform(-100, 100, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    checkpointer.clear()
    assert not (tmp_path / "ck").exists()


# --- known bug ----------------------------------------------------------------------------


class _Stop(Exception):
    pass


def test_memory_mapped_datasets_keep_images_and_labels_aligned(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "decode_dataset", functools.partial(decode_dataset, in_memory_limit=0))
    seen = []

    def checking_make_dataset(pixels, labels, **kwargs):
        for images, batch_labels in make_dataset(pixels, labels, **kwargs).as_numpy_iterator():
            for image, label in zip(images, batch_labels):
                # MobileNet preprocessing keeps the channel order: blue (class 0) or red (class 1) dominates
                seen.append((int(image[..., 0].mean() > image[..., 2].mean()), int(label)))
        raise _Stop

    monkeypatch.setattr(training, "make_dataset", checking_make_dataset)
    with pytest.raises(_Stop):
        train(tiny(augmentation=None, seed=1), dataset_dir=dataset, cache_dir=tmp_path / "cache")
    assert len(seen) == 12
    assert all(colour == label for colour, label in seen), seen


@pytest.mark.slow
def test_batchnorm_frozen_keeps_every_batchnorm_layer_frozen_in_the_finetune(dataset):
    result = train(tiny(finetune={"epochs": 1, "batchnorm": "frozen"}), dataset_dir=dataset)
    backbone, index = result.model.layers[1], result.spec.unfreeze_index
    assert_unfrozen_from(backbone, index, "frozen")
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable for layer in backbone.layers)
