"""Class-per-folder datasets: scanning, skipping what cannot be read, and the train/validation/test split.

Two layouts: flat `<class>/<image>` (split here, stratified), or given splits
`train/<class>/<image>`, `validation/...` and optionally `test/...` (the archive store's names, see
finetune/stores/archive.py), taken as they are."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finetune.errors import BadDataset
from finetune.ml.images import IMAGE_EXTENSIONS, probe_image

IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})
TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class DatasetScan:
    root: Path
    classes: list[str]
    files: list[str]
    labels: list[int]
    skipped: list[Skipped] = field(default_factory=list)
    splits: list[str] | None = None  # given splits: each file's split (its path's first folder); flat: None

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for label in self.labels:
            counts[self.classes[label]] += 1
        return counts

    @property
    def split_counts(self) -> dict[str, dict[str, int]] | None:
        """{split: {class: images}} of given splits, in `SPLITS` order; None for a flat dataset."""
        if self.splits is None:
            return None
        counts = {split: dict.fromkeys(self.classes, 0) for split in SPLITS if split in set(self.splits)}
        for split, label in zip(self.splits, self.labels):
            counts[split][self.classes[label]] += 1
        return counts

    def without(self, bad: dict[str, str]) -> DatasetScan:
        """The same scan with the files in `bad` ({relative path: reason}) moved to skipped."""
        keep = [i for i, path in enumerate(self.files) if path not in bad]
        scan = DatasetScan(
            root=self.root,
            classes=self.classes,
            files=[self.files[i] for i in keep],
            labels=[self.labels[i] for i in keep],
            skipped=self.skipped + [Skipped(path, reason) for path, reason in sorted(bad.items())],
            splits=None if self.splits is None else [self.splits[i] for i in keep],
        )
        scan.check_trainable()
        return scan

    def check_trainable(self) -> None:
        if len(self.classes) < 2:
            raise BadDataset(f"a dataset needs at least 2 classes (one folder per class); found {len(self.classes)}")
        if self.split_counts is not None:
            empty = [
                f"{split}/{name}" for split, counts in self.split_counts.items() for name, n in counts.items() if not n
            ]
            if empty:
                raise BadDataset(f"every class needs at least 1 image in every split; none in: {', '.join(empty)}")
            return
        thin = [name for name, count in self.counts.items() if count < 2]
        if thin:
            raise BadDataset(f"every class needs at least 2 images; too few in: {', '.join(thin)}")


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES or name == "__MACOSX"


def _visible_dirs(root: Path) -> list[os.DirEntry]:
    return sorted(
        (entry for entry in os.scandir(root) if entry.is_dir(follow_symlinks=False) and not _is_hidden(entry.name)),
        key=lambda entry: entry.name,
    )


def has_given_splits(root: str | Path) -> bool:
    """Whether `root` is laid out as given splits: its folders are split names, `train` and
    `validation` among them, and `train` holds class folders (a flat dataset's class folders hold images)."""
    root = Path(root)
    names = {entry.name for entry in _visible_dirs(root)}
    if not names or not names <= set(SPLITS) or not {TRAIN, VALIDATION} <= names:
        return False
    return any(True for _ in _visible_dirs(root / TRAIN))


def scan_dataset(root: str | Path, *, probe: bool = True, max_pixels: int = 50_000_000) -> DatasetScan:
    """List `root/<class>/<image>` (or `root/<split>/<class>/<image>`, see `has_given_splits`); with
    `probe`, decode each image and skip those that fail. Given splits must hold the same classes.

    Files are relative POSIX paths, sorted, so the same folder always gives the same order.
    """
    root = Path(root)
    if not root.is_dir():
        raise BadDataset(f"dataset folder {root} does not exist")
    if not has_given_splits(root):
        scan = _scan_classes(root, root, probe=probe, max_pixels=max_pixels)
        scan.check_trainable()
        return scan
    parts = {
        entry.name: _scan_classes(root, Path(entry.path), probe=probe, max_pixels=max_pixels)
        for entry in _visible_dirs(root)
    }
    _refuse_different_classes({split: parts[split].classes for split in SPLITS if split in parts})
    classes = parts[TRAIN].classes
    scan = DatasetScan(root=root, classes=classes, files=[], labels=[], splits=[])
    for split in (name for name in SPLITS if name in parts):
        scan.files += parts[split].files
        scan.labels += parts[split].labels
        scan.splits += [split] * len(parts[split].files)
        scan.skipped += parts[split].skipped
    for entry in os.scandir(root):
        if entry.is_file(follow_symlinks=False) and not _is_hidden(entry.name):
            scan.skipped.append(Skipped(entry.name, "not inside a split's class folder"))
    scan.skipped.sort(key=lambda item: item.path)
    scan.check_trainable()
    return scan


def _refuse_different_classes(classes_by_split: dict[str, list[str]]) -> None:
    """400 naming each split's missing and extra classes against the union of all splits."""
    every = sorted(set().union(*classes_by_split.values()))
    faults = []
    for split, classes in classes_by_split.items():
        missing = [name for name in every if name not in classes]
        if missing:
            faults.append(f"{split}/ lacks {', '.join(missing)}")
    if faults:
        raise BadDataset(f"the splits must hold the same class folders: {'; '.join(faults)}")


def _scan_classes(root: Path, folder: Path, *, probe: bool, max_pixels: int) -> DatasetScan:
    """`folder/<class>/<image>`, paths relative to `root`; unchecked."""
    class_dirs = _visible_dirs(folder)
    classes = [entry.name for entry in class_dirs]
    files: list[str] = []
    labels: list[int] = []
    skipped: list[Skipped] = []
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False) and not _is_hidden(entry.name):
            skipped.append(Skipped(Path(entry.path).relative_to(root).as_posix(), "not inside a class folder"))
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(Path(class_dir.path).rglob("*")):
            relative = path.relative_to(root).as_posix()
            if any(_is_hidden(part) for part in path.relative_to(root).parts) or path.is_dir():
                continue
            if path.is_symlink() or not path.is_file():
                skipped.append(Skipped(relative, "not a regular file"))
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(Skipped(relative, f"not an image file ({path.suffix or 'no extension'})"))
                continue
            reason = probe_image(path, max_pixels=max_pixels) if probe else None
            if reason:
                skipped.append(Skipped(relative, reason))
                continue
            files.append(relative)
            labels.append(label)
    skipped.sort(key=lambda item: item.path)
    return DatasetScan(root=root, classes=classes, files=files, labels=labels, skipped=skipped)


def stratified_split(
    labels: list[int] | np.ndarray, *, validation_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices: each class split in the same proportion, the same every time for a seed.

    Every class keeps at least one image on each side.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, validation = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        n_val = int(round(len(members) * validation_split))
        n_val = min(max(n_val, 1), len(members) - 1)
        validation.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(validation, dtype=np.int64))


def stratified_three_way_split(
    labels: list[int] | np.ndarray,
    *,
    validation_split: float,
    test_split: float,
    seed: int,
    classes: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test indices, each class split in the same proportions, the same every
    time for a seed. Every class keeps at least one image in each of the three."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    names = np.unique(labels)
    thin = [classes[label] if classes else str(label) for label in names if np.count_nonzero(labels == label) < 3]
    if thin:
        raise BadDataset(
            f"a train/validation/test split needs at least 3 images per class; too few in: {', '.join(thin)}"
        )
    train, validation, test = [], [], []
    for label in names:
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        n_test = min(max(int(round(len(members) * test_split)), 1), len(members) - 2)
        n_val = min(max(int(round(len(members) * validation_split)), 1), len(members) - n_test - 1)
        test.extend(members[:n_test])
        validation.extend(members[n_test : n_test + n_val])
        train.extend(members[n_test + n_val :])
    return tuple(np.sort(np.array(part, dtype=np.int64)) for part in (train, validation, test))


@dataclass(frozen=True)
class Splits:
    """Row indices of the train, validation and (possibly empty) test split."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split_dataset(
    scan: DatasetScan, labels: np.ndarray, *, validation_split: float, test_split: float | None, seed: int
) -> Splits:
    """The scan's given splits; else the stratified split (three-way with `test_split`).
    `labels` are the scan's, row for row."""
    if scan.splits is not None:
        splits = np.asarray(scan.splits)
        return Splits(*(np.flatnonzero(splits == name).astype(np.int64) for name in SPLITS))
    if test_split:
        return Splits(
            *stratified_three_way_split(
                labels, validation_split=validation_split, test_split=test_split, seed=seed, classes=scan.classes
            )
        )
    train, validation = stratified_split(labels, validation_split=validation_split, seed=seed)
    return Splits(train, validation, np.zeros((0,), dtype=np.int64))
