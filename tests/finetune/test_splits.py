"""Given splits (train/validation/test folders), the stratified three-way split, and the held-out
figures a test split gives: scanning, splitting, and training on a test split."""

from __future__ import annotations

import numpy as np
import pytest

from finetune.errors import BadDataset
from finetune.ml.scan import (
    has_given_splits,
    scan_dataset,
    split_dataset,
    stratified_split,
    stratified_three_way_split,
)
from tests.finetune.conftest import build_dataset_dir


def build_split_dir(root, layout: dict[str, tuple[tuple[str, ...], int]]):
    """`root/<split>/<class>/...` from {split: (classes, per_class)}."""
    for split, (classes, per_class) in layout.items():
        build_dataset_dir(root / split, classes=classes, per_class=per_class, size=16)
    return root


def test_given_splits_are_scanned_as_they_are_with_counts_per_split_and_class(tmp_path):
    root = build_split_dir(
        tmp_path / "images",
        {"train": (("red", "blue"), 4), "validation": (("red", "blue"), 2), "test": (("red", "blue"), 3)},
    )
    scan = scan_dataset(root)
    assert scan.classes == ["blue", "red"]
    assert scan.split_counts == {
        "train": {"blue": 4, "red": 4},
        "validation": {"blue": 2, "red": 2},
        "test": {"blue": 3, "red": 3},
    }
    assert scan.counts == {"blue": 9, "red": 9}
    assert "test/red/red_002.png" in scan.files and scan.splits[scan.files.index("test/red/red_002.png")] == "test"
    splits = split_dataset(scan, np.asarray(scan.labels), validation_split=0.25, test_split=None, seed=42)
    assert [len(part) for part in (splits.train, splits.validation, splits.test)] == [8, 4, 6]
    assert all(scan.files[i].startswith("test/") for i in splits.test)
    assert all(scan.files[i].startswith("validation/") for i in splits.validation)


def test_splits_with_different_class_sets_are_refused_naming_the_classes(tmp_path):
    root = build_split_dir(
        tmp_path / "images",
        {"train": (("red", "blue", "green"), 2), "validation": (("red", "blue"), 2), "test": (("red", "yellow"), 2)},
    )
    with pytest.raises(BadDataset) as refused:
        scan_dataset(root)
    message = refused.value.message
    assert refused.value.status_code == 400
    assert "validation/ lacks green, yellow" in message
    assert "test/ lacks blue, green" in message
    assert "train/ lacks yellow" in message


def test_a_flat_dataset_with_classes_named_like_splits_stays_flat(tmp_path):
    root = build_dataset_dir(tmp_path / "images", classes=("red", "blue"), per_class=3, size=16)
    (root / "red").rename(root / "train")
    (root / "blue").rename(root / "validation")
    assert not has_given_splits(root)
    scan = scan_dataset(root)
    assert scan.classes == ["train", "validation"] and scan.splits is None and scan.split_counts is None


def test_a_flat_dataset_without_test_split_is_split_exactly_as_before(tmp_path):
    scan = scan_dataset(build_dataset_dir(tmp_path / "images", per_class=9, size=16))
    labels = np.asarray(scan.labels)
    splits = split_dataset(scan, labels, validation_split=0.25, test_split=None, seed=7)
    train, validation = stratified_split(labels, validation_split=0.25, seed=7)
    assert np.array_equal(splits.train, train) and np.array_equal(splits.validation, validation)
    assert len(splits.test) == 0


def test_the_three_way_split_is_stratified_disjoint_complete_and_seeded():
    labels = np.repeat([0, 1, 2], [20, 40, 8])
    train, validation, test = stratified_three_way_split(labels, validation_split=0.25, test_split=0.25, seed=3)
    assert sorted([*train, *validation, *test]) == list(range(len(labels)))
    for part, fraction in ((validation, 0.25), (test, 0.25)):
        counts = np.bincount(labels[part], minlength=3)
        assert counts.tolist() == [round(20 * fraction), round(40 * fraction), round(8 * fraction)]
    assert np.bincount(labels[train], minlength=3).tolist() == [10, 20, 4]
    again = stratified_three_way_split(labels, validation_split=0.25, test_split=0.25, seed=3)
    other = stratified_three_way_split(labels, validation_split=0.25, test_split=0.25, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip((train, validation, test), again))
    assert not np.array_equal(test, other[2])


def test_the_three_way_split_keeps_an_image_of_each_class_in_each_part_and_refuses_thin_classes():
    labels = np.repeat([0, 1], [3, 10])
    train, validation, test = stratified_three_way_split(labels, validation_split=0.05, test_split=0.05, seed=0)
    for part in (train, validation, test):
        assert set(labels[part]) == {0, 1}
    with pytest.raises(BadDataset, match="at least 3 images per class; too few in: owls"):
        stratified_three_way_split(
            np.repeat([0, 1], [2, 10]), validation_split=0.2, test_split=0.2, seed=0, classes=["owls", "cats"]
        )


def test_test_split_needs_room_for_training_images():
    from tests.finetune.conftest import tiny_spec

    assert tiny_spec(test_split=0.2).test_split == 0.2
    assert tiny_spec().test_split is None
    with pytest.raises(ValueError, match="validation_split \\+ test_split must be below 1"):
        tiny_spec(validation_split=0.5, test_split=0.5)


@pytest.mark.slow
def test_training_with_a_test_split_measures_the_final_metrics_on_it_alone(tmp_path):
    from finetune.ml.training import train
    from tests.finetune.conftest import tiny_spec

    root = build_dataset_dir(tmp_path / "images", per_class=12, size=16)
    result = train(tiny_spec(test_split=0.25, thresholds={"target_precision": 0.5}), dataset_dir=root)
    assert result.metrics_split == "test" and (result.num_train, result.num_validation, result.num_test) == (12, 6, 6)
    assert sum(map(sum, result.metrics["confusion_matrix"])) == 6
    assert sum(map(sum, result.validation_metrics["confusion_matrix"])) == 6
    assert len(result.held_out.files) == 6 and result.curves["count"] == 6
    scan = scan_dataset(root)
    splits = split_dataset(scan, np.asarray(scan.labels), validation_split=0.25, test_split=0.25, seed=42)
    assert result.held_out.files == [scan.files[i] for i in splits.test]
    assert set(result.thresholds["per_class"]) == {"blue", "red"}
