"""Early stopping, learning-rate schedules, class weights and warm starts (issue 15, items 3-6)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.utils.class_weight import compute_class_weight

from finetune.ml.checkpoint import Checkpointer, TrainingState
from finetune.ml.spec import JobSpec, TrainingSpec, unknown_weighted_classes, warm_start_mismatches
from finetune.ml.training.control import PhaseControl, class_weights, scheduled_rate
from finetune.ml.training.recipe import WarmStart, train
from finetune.stores.jobs import overall_progress
from tests.helpers import LEARNABLE_SPEC


def learnable(**warmup) -> TrainingSpec:
    """VGG16 on random weights at 32 px, the head trained on cached features (tests/helpers.py)."""
    return TrainingSpec.model_validate({**LEARNABLE_SPEC, "warmup": {**LEARNABLE_SPEC["warmup"], **warmup}})


def phase_rows(result, phase: str = "warmup") -> list[dict]:
    return [row for row in result.history if row["phase"] == phase]


def held_out_loss(result) -> float:
    picked = result.held_out.probabilities[np.arange(len(result.held_out.labels)), result.held_out.labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-7, 1 - 1e-7))))


# --- the spec ------------------------------------------------------------------------------


def test_the_default_spec_keeps_the_seeds_fixed_schedule():
    spec = TrainingSpec()
    assert spec.warmup.early_stopping is None and spec.warmup.schedule is None
    assert spec.finetune.early_stopping is None and spec.finetune.schedule is None
    assert spec.class_weight is None and JobSpec(dataset_id="d").init_model_id is None
    assert spec.total_epochs == 125


def test_early_stopping_defaults_and_bounds():
    phase = TrainingSpec.model_validate({"finetune": {"early_stopping": {}}}).finetune
    assert phase.early_stopping.model_dump() == {
        "monitor": "val_loss",
        "patience": 5,
        "min_delta": 0.0,
        "restore_best": True,
    }
    for bad in ({"monitor": "loss"}, {"patience": 0}, {"min_delta": -0.1}, {"unknown": 1}):
        with pytest.raises(ValidationError, match="early_stopping"):
            TrainingSpec.model_validate({"warmup": {"early_stopping": bad}})


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"kind": "linear"}, "kind"),
        ({"kind": "cosine", "warmup_epochs": 30}, "warmup_epochs 30 exceeds the phase's 25 epochs"),
        ({"kind": "cosine", "min_lr": 0.01}, "min_lr 0.01 must be below learning_rate 0.001"),
        ({"kind": "plateau", "factor": 1.0}, "factor"),
    ],
)
def test_schedule_refusals_name_the_fault(schedule, message):
    with pytest.raises(ValidationError, match=message):
        TrainingSpec.model_validate({"warmup": {"schedule": schedule}})


def test_class_weight_takes_balanced_or_positive_weights_by_name():
    assert TrainingSpec(class_weight="balanced").class_weight == "balanced"
    assert TrainingSpec(class_weight={"cats": 2.0}).class_weight == {"cats": 2.0}
    for bad, message in (("inverse", "class_weight"), ({"cats": 0.0}, "must be > 0"), ({}, "at least one")):
        with pytest.raises(ValidationError, match=message):
            TrainingSpec(class_weight=bad)
    spec = TrainingSpec(class_weight={"cats": 2.0, "horses": 1.0})
    assert unknown_weighted_classes(spec, ["cats", "dogs"]) == ["horses"]


def test_class_weights_balanced_is_scikit_learns_and_a_map_names_classes():
    labels = np.array([0] * 9 + [1] * 3 + [2] * 6)
    balanced = class_weights(TrainingSpec(class_weight="balanced"), ["a", "b", "c"], labels)
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=labels)
    assert balanced == pytest.approx({0: expected[0], 1: expected[1], 2: expected[2]})
    assert balanced[1] == pytest.approx(18 / (3 * 3))
    named = class_weights(TrainingSpec(class_weight={"b": 3.0}), ["a", "b", "c"], labels)
    assert named == {0: 1.0, 1: 3.0, 2: 1.0}
    with pytest.raises(ValueError, match="lacks: z"):
        class_weights(TrainingSpec(class_weight={"z": 3.0}), ["a", "b", "c"], labels)


def test_warm_start_mismatches_name_backbone_alpha_image_size_and_head():
    spec = TrainingSpec(backbone="mobilenet", alpha=0.25, image_size=128)
    same = {"id": "m1", "backbone": "mobilenet", "alpha": 0.25, "image_size": 128, "spec": {"head": {"units": 256}}}
    assert warm_start_mismatches(spec, same) == []
    other = {"id": "m1", "backbone": "vgg16", "alpha": None, "image_size": 224, "spec": {"head": {"units": 8}}}
    found = " ".join(warm_start_mismatches(spec, other))
    for name in ("backbone 'mobilenet'", "alpha 0.25", "image_size 128", "head.units 256"):
        assert name in found


# --- schedules -----------------------------------------------------------------------------


def test_scheduled_rates_follow_ramp_and_cosine_formula():
    schedule = TrainingSpec.model_validate(
        {"warmup": {"epochs": 10, "schedule": {"kind": "cosine", "warmup_epochs": 2, "min_lr": 1e-4}}}
    ).warmup.schedule
    rates = [scheduled_rate(schedule, 1e-3, 10, epoch) for epoch in range(10)]
    assert rates[:2] == pytest.approx([5e-4, 1e-3])
    assert rates[2] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-4)
    assert rates[5] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 7)))


def test_cosine_learning_rates_are_in_the_history(tmp_path, make_dataset_dir):
    data = make_dataset_dir(tmp_path / "data", per_class=6, size=32)
    schedule = {"kind": "cosine", "warmup_epochs": 2, "min_lr": 0.001}
    result = train(learnable(epochs=6, learning_rate=0.01, schedule=schedule), dataset_dir=data)
    rates = [row["learning_rate"] for row in phase_rows(result)]
    # the ramp (0.01 * 1/2, 0.01), then 0.001 + 0.009 * (1 + cos(pi * t / 3)) / 2 for t = 0..3
    expected = [0.005, 0.01] + [0.001 + 0.009 * (1 + math.cos(math.pi * t / 3)) / 2 for t in range(4)]
    assert rates == pytest.approx(expected, rel=1e-5)


def test_plateau_schedule_reduces_the_rate_after_patience(tmp_path, make_dataset_dir):
    """val_accuracy reaches 1.0 and can improve no more: after `patience` epochs the rate is cut."""
    data = make_dataset_dir(tmp_path / "data", per_class=6, size=32)
    schedule = {"kind": "plateau", "monitor": "val_accuracy", "patience": 1, "factor": 0.5, "min_lr": 1e-4}
    result = train(learnable(epochs=20, learning_rate=0.01, schedule=schedule), dataset_dir=data)
    rows = phase_rows(result)
    assert rows[-1]["val_accuracy"] == 1.0
    assert rows[0]["learning_rate"] == pytest.approx(0.01)
    assert rows[-1]["learning_rate"] < 0.01
    assert all(
        later <= earlier
        for earlier, later in zip([r["learning_rate"] for r in rows], [r["learning_rate"] for r in rows[1:]])
    )


# --- early stopping ------------------------------------------------------------------------


def test_early_stopping_stops_on_a_plateau_and_keeps_the_best_epoch(tmp_path, make_dataset_dir):
    """Held-out accuracy reaches its best and stays (the plateau); the phase stops `patience` epochs
    later and ends with the best epoch's weights, not the last one's (its val_loss kept falling)."""
    data = make_dataset_dir(tmp_path / "data", per_class=6, size=32)
    stopping = {"monitor": "val_accuracy", "patience": 3}
    result = train(learnable(epochs=40, early_stopping=stopping), dataset_dir=data)
    rows = phase_rows(result)
    best = max(row["val_accuracy"] for row in rows)
    first_best = next(row["epoch"] for row in rows if row["val_accuracy"] == best)
    assert len(rows) == first_best + 3 < 40
    assert rows[-1]["stopped_early"] is True and rows[-1]["kept_epoch"] == first_best
    assert all("stopped_early" not in row for row in rows[:-1])
    assert held_out_loss(result) == pytest.approx(rows[first_best - 1]["val_loss"], rel=1e-4)
    assert held_out_loss(result) != pytest.approx(rows[-1]["val_loss"], rel=1e-4)
    assert result.metrics["accuracy"] == best


def test_progress_counts_a_stopped_phase_by_the_epochs_it_ran():
    spec = {"warmup": {"epochs": 10}, "finetune": {"epochs": 10}}
    history = [{"phase": "warmup", "epoch": e} for e in (1, 2, 3)]
    assert overall_progress(spec, history, "warmup", 0, 4) == pytest.approx(3 / 20)
    history[-1] |= {"stopped_early": True, "kept_epoch": 1}
    assert overall_progress(spec, history, "warmup", 0, 4) == pytest.approx(3 / 13)


def tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def test_resumed_early_stopping_keeps_its_count_best_and_weights(tmp_path):
    """A checkpoint of a phase two epochs past its best: the resumed control stops at the next flat
    epoch (patience 3) and puts the best epoch's weights back."""
    phase = TrainingSpec.model_validate(
        {"warmup": {"early_stopping": {"monitor": "val_accuracy", "patience": 3}}}
    ).warmup
    model = tiny_model()
    best = [np.full_like(w, 7.0) for w in model.get_weights()]
    first = PhaseControl(phase)
    first.stopper.set_model(model)
    first.stopper.on_train_begin()
    for epoch, accuracy in enumerate([0.5, 0.8, 0.7, 0.8]):
        if epoch == 1:
            model.set_weights(best)
        first.stopper.on_epoch_end(epoch, {"val_accuracy": accuracy})
        if epoch == 1:
            model.set_weights([np.zeros_like(w) for w in best])
    state = first.state(model)
    assert state["early_stopping"] == {"wait": 2, "best": 0.8, "best_epoch": 1, "stopped_epoch": 0}
    assert first.improved_at(1) and not first.improved_at(3)

    checkpointer = Checkpointer(tmp_path / "checkpoint")
    checkpointer.save(model, TrainingState(phase="warmup", epoch=2, stopping=state), best_weights=best)
    checkpointer.save(
        model, TrainingState(phase="warmup", epoch=4, stopping={**state, "best_file": "best-warmup-2.npz"})
    )
    resumed = checkpointer.load()
    assert resumed.state.stopping["early_stopping"] == state["early_stopping"]
    assert [np.array_equal(a, b) for a, b in zip(resumed.best_weights, best)] == [True, True]

    again = PhaseControl(phase, resumed=resumed.state.stopping, best_weights=resumed.best_weights)
    again.stopper.set_model(resumed.trainee)
    again.stopper.on_train_begin()
    again.stopper.on_epoch_end(4, {"val_accuracy": 0.8})
    assert resumed.trainee.stop_training and again.stopped() and again.stopper.stopped_epoch == 4
    again.stopper.on_train_end()
    assert all(np.array_equal(a, b) for a, b in zip(resumed.trainee.get_weights(), best))


def test_a_run_resumed_after_its_phase_stopped_does_not_train_it_again(tmp_path, make_dataset_dir):
    data = make_dataset_dir(tmp_path / "data", per_class=6, size=32)
    spec = learnable(epochs=40, early_stopping={"monitor": "val_accuracy", "patience": 2})
    checkpoints = tmp_path / "checkpoints"
    first = train(spec, dataset_dir=data, checkpoint_dir=checkpoints)
    rows = phase_rows(first)
    assert rows[-1]["stopped_early"]
    saved = Checkpointer(checkpoints).load()
    assert saved.state.epoch == len(rows) and saved.state.stopping["early_stopping"]["stopped_epoch"] == len(rows) - 1
    assert saved.best_weights is not None
    again = train(spec, dataset_dir=data, checkpoint_dir=checkpoints)
    assert again.history == first.history
    # the head ends with the best epoch's weights, as the uninterrupted run's did (its features are not
    # compared: a backbone on random weights is drawn anew in a resumed process)
    for ended in (first, again):
        head = ended.model.layers[2].get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(head, saved.best_weights))


# --- class weights -------------------------------------------------------------------------


def test_class_weights_change_the_loss_on_an_imbalanced_set(tmp_path, make_dataset_dir):
    data = make_dataset_dir(tmp_path / "data", classes=("red",), per_class=18, size=32)
    make_dataset_dir(data, classes=("blue",), per_class=4, size=32)
    plain = train(learnable(epochs=2), dataset_dir=data)
    weighted = train(learnable(epochs=2).model_copy(update={"class_weight": "balanced"}), dataset_dir=data)
    assert [r["loss"] for r in plain.history] != pytest.approx([r["loss"] for r in weighted.history], rel=1e-3)
    per_class = weighted.metrics["report"]["per_class"]
    held_out = weighted.held_out.labels
    assert [per_class[name]["support"] for name in weighted.classes] == [int(np.sum(held_out == i)) for i in (0, 1)]
    assert per_class["red"]["support"] > per_class["blue"]["support"] > 0


# --- warm starts ---------------------------------------------------------------------------


def first_epoch_reaching(result, accuracy: float) -> int | None:
    return next((row["epoch"] for row in phase_rows(result) if row["val_accuracy"] >= accuracy), None)


def test_a_warm_start_with_an_added_class_keeps_the_shared_rows_and_gets_there_sooner(tmp_path, make_dataset_dir):
    two = make_dataset_dir(tmp_path / "two", classes=("red", "blue"), per_class=8, size=32)
    three = make_dataset_dir(tmp_path / "three", classes=("red", "blue", "lime"), per_class=8, size=32)
    old = train(learnable(epochs=12), dataset_dir=two)
    warm_start = WarmStart(old.model, old.classes)

    untrained = train(learnable(epochs=0), dataset_dir=three, warm_start=warm_start)
    old_head, new_head = old.model.layers[2], untrained.model.layers[2]
    old_kernel, old_bias = old_head.get_layer("predictions").get_weights()
    kernel, bias = new_head.get_layer("predictions").get_weights()
    for name in ("red", "blue"):
        new, before = untrained.classes.index(name), old.classes.index(name)
        assert np.array_equal(kernel[:, new], old_kernel[:, before]) and bias[new] == old_bias[before]
    assert kernel.shape == (old_kernel.shape[0], 3)
    for layer in ("fc",):
        assert all(
            np.array_equal(a, b)
            for a, b in zip(new_head.get_layer(layer).get_weights(), old_head.get_layer(layer).get_weights())
        )
    assert all(
        np.array_equal(a, b) for a, b in zip(untrained.model.layers[1].get_weights(), old.model.layers[1].get_weights())
    )

    target = old.metrics["accuracy"]
    cold = train(learnable(epochs=12), dataset_dir=three)
    warm = train(learnable(epochs=12), dataset_dir=three, warm_start=warm_start)
    cold_epoch, warm_epoch = first_epoch_reaching(cold, target), first_epoch_reaching(warm, target)
    assert warm_epoch is not None
    assert cold_epoch is None or warm_epoch < cold_epoch, (target, phase_rows(cold), phase_rows(warm))


def test_a_resumed_schedule_continues_at_its_epoch_and_rate():
    """Cosine: the rate of the epoch the run resumes at; plateau: the checkpoint's rate and counters."""
    cosine = TrainingSpec.model_validate(
        {"warmup": {"epochs": 10, "learning_rate": 0.1, "schedule": {"kind": "cosine", "min_lr": 0.0}}}
    ).warmup
    model = tiny_model()
    scheduler = PhaseControl(cosine).scheduler
    scheduler.set_model(model)
    scheduler.on_epoch_begin(6)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 6 / 9)))

    plateau = TrainingSpec.model_validate(
        {"warmup": {"learning_rate": 1.0, "schedule": {"kind": "plateau", "patience": 2, "factor": 0.5}}}
    ).warmup
    resumed = {"learning_rate": 0.25, "plateau": {"wait": 1, "best": 0.5, "cooldown_counter": 0}}
    control = PhaseControl(plateau, resumed=resumed)
    model = tiny_model()
    control.resume_rate(model)
    for callback in control.callbacks:
        callback.set_model(model)
        callback.on_train_begin()
    control.scheduler.on_epoch_begin(5)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.25)
    control.plateau.on_epoch_end(5, {"val_loss": 0.6})
    assert float(model.optimizer.learning_rate) == pytest.approx(0.125)
    assert control.state(model) == {
        "learning_rate": pytest.approx(0.125),
        "plateau": {"wait": 0, "best": 0.5, "cooldown_counter": 0},
    }
