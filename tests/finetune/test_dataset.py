"""Scanning class-per-folder datasets and the stratified split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from finetune.errors import BadDataset
from finetune.ml.scan import Skipped, scan_dataset, stratified_split
from tests.helpers import make_image, make_image_bytes


def skipped_reasons(scan) -> dict[str, str]:
    return {item.path: item.reason for item in scan.skipped}


# --- scan ------------------------------------------------------------------------------


def test_scan_lists_sorted_classes_and_files_with_labels(make_dataset_dir, tmp_path):
    root = make_dataset_dir(tmp_path / "d", classes=("yellow", "blue", "red"), per_class=3)
    scan = scan_dataset(root)
    assert scan.classes == ["blue", "red", "yellow"]
    assert scan.files == sorted(scan.files)
    assert scan.files[:3] == ["blue/blue_000.png", "blue/blue_001.png", "blue/blue_002.png"]
    assert scan.labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(scan.classes[label] == path.split("/")[0] for path, label in zip(scan.files, scan.labels))
    assert scan.counts == {"blue": 3, "red": 3, "yellow": 3}
    assert scan.skipped == []
    assert scan.root == root


def test_scan_includes_images_in_nested_folders_under_their_class(make_dataset_dir, tmp_path):
    root = make_dataset_dir(tmp_path / "d", per_class=2)
    (root / "red" / "more").mkdir()
    make_image("red", 16).save(root / "red" / "more" / "deep.jpg")
    scan = scan_dataset(root)
    assert "red/more/deep.jpg" in scan.files
    assert scan.counts == {"blue": 2, "red": 3}


def test_scan_skips_non_image_files_with_a_reason(make_dataset_dir, tmp_path):
    root = make_dataset_dir(tmp_path / "d", per_class=3)
    (root / "red" / "notes.txt").write_text("not a picture")
    (root / "blue" / "LICENSE").write_text("MIT")
    scan = scan_dataset(root)
    reasons = skipped_reasons(scan)
    assert "not an image file" in reasons["red/notes.txt"] and ".txt" in reasons["red/notes.txt"]
    assert "not an image file" in reasons["blue/LICENSE"] and "no extension" in reasons["blue/LICENSE"]
    assert "red/notes.txt" not in scan.files and "blue/LICENSE" not in scan.files
    assert scan.counts == {"blue": 3, "red": 3}


def test_scan_skips_corrupt_images_with_a_reason(make_dataset_dir, tmp_path):
    root = make_dataset_dir(tmp_path / "d", per_class=3)
    good = make_image_bytes("red", 40)
    (root / "red" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "red" / "text.jpg").write_text("hello, I am not a JPEG")
    (root / "blue" / "empty.png").write_bytes(b"")
    scan = scan_dataset(root)
    reasons = skipped_reasons(scan)
    assert set(reasons) == {"red/truncated.png", "red/text.jpg", "blue/empty.png"}
    assert "truncated.png" in reasons["red/truncated.png"]
    assert "not an image" in reasons["red/text.jpg"]
    assert "empty" in reasons["blue/empty.png"]
    assert scan.counts == {"blue": 3, "red": 3}
    assert [item.path for item in scan.skipped] == sorted(reasons)


def test_scan_without_probe_does_not_decode(make_dataset_dir, tmp_path):
    root = make_dataset_dir(tmp_path / "d", per_class=2)
    (root / "red" / "text.jpg").write_text("not a JPEG")
    scan = scan_dataset(root, probe=False)
    assert "red/text.jpg" in scan.files
    assert scan.skipped == []


def test_scan_ignores_hidden_files_and_folders_silently(make_dataset_dir, tmp_path):
    root = make_dataset_dir(tmp_path / "d", per_class=2)
    (root / "red" / ".DS_Store").write_bytes(b"\x00\x01")
    make_image("red", 16).save(root / "red" / "._red_000.png")
    (root / "blue" / "Thumbs.db").write_bytes(b"\x00")
    (root / ".git").mkdir()
    make_image("green", 16).save(root / ".git" / "x.png")
    make_image("green", 16).save(root / ".git" / "y.png")
    (root / "__MACOSX" / "red").mkdir(parents=True)
    make_image("red", 16).save(root / "__MACOSX" / "red" / "a.png")
    (root / "red" / ".cache").mkdir()
    make_image("red", 16).save(root / "red" / ".cache" / "a.png")
    (root / ".hidden_top.png").write_bytes(make_image_bytes("red"))
    scan = scan_dataset(root)
    assert scan.classes == ["blue", "red"]
    assert scan.counts == {"blue": 2, "red": 2}
    assert scan.skipped == []


def test_scan_skips_files_at_the_top_level(make_dataset_dir, tmp_path):
    root = make_dataset_dir(tmp_path / "d", per_class=2)
    (root / "stray.png").write_bytes(make_image_bytes("red"))
    (root / "README.md").write_text("a dataset")
    scan = scan_dataset(root)
    assert skipped_reasons(scan) == {
        "README.md": "not inside a class folder",
        "stray.png": "not inside a class folder",
    }
    assert scan.classes == ["blue", "red"]
    assert "stray.png" not in scan.files


def test_scan_skips_symlinks(make_dataset_dir, tmp_path):
    root = make_dataset_dir(tmp_path / "d", per_class=2)
    outside = tmp_path / "outside.png"
    make_image("red", 16).save(outside)
    (root / "red" / "link.png").symlink_to(outside)
    scan = scan_dataset(root)
    assert skipped_reasons(scan) == {"red/link.png": "not a regular file"}
    assert scan.counts == {"blue": 2, "red": 2}


def test_scan_refuses_a_missing_folder(tmp_path):
    with pytest.raises(BadDataset, match="does not exist"):
        scan_dataset(tmp_path / "nowhere")


def test_scan_refuses_a_single_class(make_dataset_dir, tmp_path):
    root = make_dataset_dir(tmp_path / "d", classes=("red",), per_class=4)
    with pytest.raises(BadDataset) as caught:
        scan_dataset(root)
    assert "at least 2 classes" in caught.value.message
    assert "found 1" in caught.value.message


def test_scan_refuses_no_classes_at_all(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "loose.png").write_bytes(make_image_bytes("red"))
    with pytest.raises(BadDataset, match="at least 2 classes.*found 0"):
        scan_dataset(tmp_path / "empty")


def test_scan_refuses_a_class_with_fewer_than_two_images(make_dataset_dir, tmp_path):
    root = make_dataset_dir(tmp_path / "d", classes=("red", "blue", "green"), per_class=3)
    for path in list((root / "green").iterdir())[1:]:
        path.unlink()
    with pytest.raises(BadDataset) as caught:
        scan_dataset(root)
    assert "at least 2 images" in caught.value.message
    assert "green" in caught.value.message
    assert "red" not in caught.value.message and "blue" not in caught.value.message


def test_a_class_left_with_one_readable_image_is_refused(make_dataset_dir, tmp_path):
    root = make_dataset_dir(tmp_path / "d", per_class=3)
    for path in sorted((root / "blue").iterdir())[1:]:
        path.write_bytes(b"garbage")
    with pytest.raises(BadDataset, match="too few in: blue"):
        scan_dataset(root)


def test_an_empty_class_folder_is_refused(make_dataset_dir, tmp_path):
    root = make_dataset_dir(tmp_path / "d", per_class=3)
    (root / "green").mkdir()
    with pytest.raises(BadDataset, match="green"):
        scan_dataset(root)


def test_without_moves_files_to_skipped_and_keeps_labels_aligned(make_dataset_dir, tmp_path):
    scan = scan_dataset(make_dataset_dir(tmp_path / "d", per_class=3))
    smaller = scan.without({"blue/blue_001.png": "broken"})
    assert smaller.files == [
        "blue/blue_000.png",
        "blue/blue_002.png",
        "red/red_000.png",
        "red/red_001.png",
        "red/red_002.png",
    ]
    assert smaller.labels == [0, 0, 1, 1, 1]
    assert Skipped("blue/blue_001.png", "broken") in smaller.skipped
    with pytest.raises(BadDataset, match="blue"):
        smaller.without({"blue/blue_000.png": "broken"})


# --- stratified split ---------------------------------------------------------------------

LABELS = [0] * 20 + [1] * 12 + [2] * 8


def test_split_is_the_same_for_the_same_seed():
    first = stratified_split(LABELS, validation_split=0.25, seed=7)
    second = stratified_split(LABELS, validation_split=0.25, seed=7)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_split_differs_for_another_seed():
    _, validation_a = stratified_split(LABELS, validation_split=0.25, seed=1)
    _, validation_b = stratified_split(LABELS, validation_split=0.25, seed=2)
    assert set(validation_a) != set(validation_b)


def test_split_keeps_the_proportion_in_every_class():
    train, validation = stratified_split(LABELS, validation_split=0.25, seed=0)
    labels = np.asarray(LABELS)
    assert Counter(labels[validation].tolist()) == {0: 5, 1: 3, 2: 2}
    assert Counter(labels[train].tolist()) == {0: 15, 1: 9, 2: 6}


def test_split_is_disjoint_and_covers_every_index():
    train, validation = stratified_split(LABELS, validation_split=0.3, seed=3)
    assert set(train).isdisjoint(validation)
    assert sorted([*train, *validation]) == list(range(len(LABELS)))
    assert list(train) == sorted(train) and list(validation) == sorted(validation)
    assert train.dtype == np.int64 and validation.dtype == np.int64


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_every_class_lands_on_both_sides(fraction):
    labels = [0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    train, validation = stratified_split(labels, validation_split=fraction, seed=0)
    labels = np.asarray(labels)
    assert set(labels[train]) == {0, 1, 2}
    assert set(labels[validation]) == {0, 1, 2}


def test_split_accepts_a_numpy_label_array():
    train, validation = stratified_split(np.array(LABELS), validation_split=0.5, seed=0)
    assert len(train) + len(validation) == len(LABELS)
    assert len(validation) == 20
