"""The dataset store's given splits and versions: records with counts per split, versions that share
their parent's files (hard links) and leave it as it was, and refusals that name what is wrong."""

from __future__ import annotations

import os
import zipfile

import pytest

from finetune.errors import BadArchive, BadDataset, NotFound
from finetune.stores.archive import ArchiveLimits
from finetune.stores.datasets import RECORD_FILE, DatasetStore
from finetune.stores.versions import Move, VersionEdits
from tests.helpers import make_dataset_zip, make_image_bytes

LIMITS = ArchiveLimits(max_bytes=50_000_000, max_files=1000, max_ratio=200.0)


@pytest.fixture
def store(tmp_path):
    return DatasetStore(tmp_path / "datasets", cache_dir=tmp_path / "cache", limits=LIMITS, max_pixels=10_000_000)


def split_zip(path, layout: dict[str, dict[str, int]]):
    with zipfile.ZipFile(path, "w") as archive:
        for split, classes in layout.items():
            for index, (name, count) in enumerate(classes.items()):
                for n in range(count):
                    archive.writestr(f"{split}/{name}/{name}_{n}.png", make_image_bytes(name, 12, seed=index * 100 + n))
    return path


def tree(store, dataset_id) -> dict[str, bytes]:
    root = store.location.local_path(dataset_id, "images")
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_archive_of_given_splits_records_counts_per_split_and_class(store, tmp_path):
    layout = {"train": {"red": 3, "blue": 4}, "val": {"red": 1, "blue": 2}, "test": {"red": 2, "blue": 2}}
    record = store.create_from_archive(split_zip(tmp_path / "s.zip", layout))
    assert record["splits"] == {
        "train": {"blue": 4, "red": 3},
        "validation": {"blue": 2, "red": 1},
        "test": {"blue": 2, "red": 2},
    }
    assert record["counts"] == {"blue": 8, "red": 6} and record["num_images"] == 14 and record["parent_id"] is None
    assert store.read_file(record["id"], "validation/red/red_0.png") == make_image_bytes("red", 12, seed=0)
    with pytest.raises(NotFound):
        store.read_file(record["id"], "red/red_0.png")
    samples = store.samples(record["id"], per_class=2)
    assert samples[1] == {"label": "red", "files": ["train/red/red_0.png", "train/red/red_1.png"]}


def test_given_splits_with_different_classes_are_refused_naming_them_and_nothing_is_kept(store, tmp_path):
    layout = {"train": {"red": 2, "blue": 2, "green": 2}, "validation": {"red": 1, "blue": 1}}
    with pytest.raises(BadDataset, match="validation/ lacks green"):
        store.create_from_archive(split_zip(tmp_path / "s.zip", layout))
    assert store.list() == [] and os.listdir(store.location.root) == []


def test_a_version_moving_two_files_shares_the_rest_by_hard_link_and_leaves_the_parent_as_it_was(store, tmp_path):
    parent = store.create_from_archive(make_dataset_zip(tmp_path / "d.zip", ("red", "blue", "green"), per_class=5))
    record_bytes = (store.location.local_path(parent["id"], RECORD_FILE)).read_bytes()
    before = tree(store, parent["id"])
    edits = VersionEdits(
        moves=[Move("red/red_000.png", "blue"), Move("red/red_001.png", "orange"), Move("red/red_002.png", "orange")],
        removals=["green/green_003.png"],
    )
    version = store.create_version(parent["id"], edits=edits)
    assert version["parent_id"] == parent["id"] and version["id"] != parent["id"]
    assert version["change"] == {"added": 0, "moved": 3, "removed": 1}
    assert version["counts"] == {"blue": 6, "green": 4, "orange": 2, "red": 2}
    after = tree(store, version["id"])
    assert after["blue/red_000.png"] == before["red/red_000.png"] and "red/red_000.png" not in after
    assert "green/green_003.png" not in after and len(after) == len(before) - 1
    assert tree(store, parent["id"]) == before
    assert store.location.local_path(parent["id"], RECORD_FILE).read_bytes() == record_bytes
    parent_file = store.location.local_path(parent["id"], "images", "red", "red_000.png")
    version_file = store.location.local_path(version["id"], "images", "blue", "red_000.png")
    assert os.stat(parent_file).st_ino == os.stat(version_file).st_ino
    shared = store.location.local_path(version["id"], "images", "green", "green_000.png")
    assert os.stat(shared).st_ino == os.stat(parent_file.parent.parent / "green" / "green_000.png").st_ino
    assert store.children(parent["id"]) == [version["id"]] and store.children(version["id"]) == []


def test_bad_paths_in_a_version_are_refused_naming_each_and_nothing_is_stored(store, tmp_path):
    parent = store.create_from_archive(make_dataset_zip(tmp_path / "d.zip", per_class=3))
    edits = VersionEdits(
        moves=[Move("../red/red_000.png", "blue"), Move("red/red_001.png", "../x"), Move("red/red_002.png", "red")],
        removals=["/etc/passwd", "blue/nope.png", "blue/blue_000.png", "blue/blue_000.png"],
    )
    with pytest.raises(BadDataset) as refused:
        store.create_version(parent["id"], edits=edits)
    message = refused.value.message
    for named in ("'../red/red_000.png'", "'/etc/passwd': an absolute path", "'blue/nope.png': no such file", "'../x'"):
        assert named in message
    assert "listed more than once" in message
    with pytest.raises(BadDataset, match="already in class 'red'"):
        store.create_version(parent["id"], edits=VersionEdits(moves=[Move("red/red_002.png", "red")]))
    assert [record["id"] for record in store.list()] == [parent["id"]]
    with pytest.raises(NotFound):
        store.create_version("nosuchdataset", edits=VersionEdits(removals=["red/red_000.png"]))


def test_a_version_from_an_archive_adds_images_to_old_and_new_classes(store, tmp_path):
    parent = store.create_from_archive(make_dataset_zip(tmp_path / "d.zip", per_class=3))
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as archive:
        archive.writestr("red/extra.png", make_image_bytes("red", 12, seed=99))
        for n in range(2):
            archive.writestr(f"green/g{n}.png", make_image_bytes("green", 12, seed=n))
    version = store.create_version(parent["id"], archive_path=tmp_path / "more.zip", name="more")
    assert version["change"] == {"added": 3, "moved": 0, "removed": 0} and version["name"] == "more"
    assert version["counts"] == {"blue": 3, "green": 2, "red": 4}
    with zipfile.ZipFile(tmp_path / "again.zip", "w") as archive:
        archive.writestr("red/red_000.png", make_image_bytes("red", 12, seed=1))
    with pytest.raises(BadDataset, match="'red/red_000.png': the dataset has that file already"):
        store.create_version(parent["id"], archive_path=tmp_path / "again.zip")


def test_a_version_of_given_splits_adds_to_one_split_and_keeps_the_layout(store, tmp_path):
    parent = store.create_from_archive(
        split_zip(tmp_path / "s.zip", {"train": {"red": 2, "blue": 2}, "validation": {"red": 1, "blue": 1}})
    )
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as archive:
        archive.writestr("train/red/new.png", make_image_bytes("red", 12, seed=42))
    version = store.create_version(parent["id"], archive_path=tmp_path / "more.zip")
    assert version["splits"] == {"train": {"blue": 2, "red": 3}, "validation": {"blue": 1, "red": 1}}
    flat = make_dataset_zip(tmp_path / "flat.zip", per_class=1)
    with pytest.raises(BadDataset, match="add images as <split>/<class>/<image>"):
        store.create_version(parent["id"], archive_path=flat)
    moved = store.create_version(parent["id"], edits=VersionEdits(moves=[Move("train/red/red_0.png", "blue")]))
    assert moved["splits"]["train"] == {"blue": 3, "red": 1}
    with pytest.raises(BadDataset, match="lacks"):  # a new class in one split only
        store.create_version(parent["id"], edits=VersionEdits(moves=[Move("train/red/red_0.png", "owl")]))
    with pytest.raises(BadArchive):
        store.create_version(
            parent["id"], archive_path=tmp_path / "s.zip.missing" if False else _not_an_archive(tmp_path)
        )


def _not_an_archive(tmp_path):
    path = tmp_path / "junk.zip"
    path.write_bytes(b"not an archive")
    return path
