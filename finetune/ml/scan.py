"""Class-per-folder datasets: scanning, skipping what cannot be read, and a stratified split."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finetune.errors import BadDataset
from finetune.ml.images import IMAGE_EXTENSIONS, probe_image

IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})


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

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for label in self.labels:
            counts[self.classes[label]] += 1
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
        )
        scan.check_trainable()
        return scan

    def check_trainable(self) -> None:
        if len(self.classes) < 2:
            raise BadDataset(f"a dataset needs at least 2 classes (one folder per class); found {len(self.classes)}")
        thin = [name for name, count in self.counts.items() if count < 2]
        if thin:
            raise BadDataset(f"every class needs at least 2 images; too few in: {', '.join(thin)}")


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES or name == "__MACOSX"


def scan_dataset(root: str | Path, *, probe: bool = True, max_pixels: int = 50_000_000) -> DatasetScan:
    """List `root/<class>/<image>`; with `probe`, decode each image and skip those that fail.

    Files are relative POSIX paths, sorted, so the same folder always gives the same order.
    """
    root = Path(root)
    if not root.is_dir():
        raise BadDataset(f"dataset folder {root} does not exist")
    class_dirs = sorted(
        (entry for entry in os.scandir(root) if entry.is_dir(follow_symlinks=False) and not _is_hidden(entry.name)),
        key=lambda entry: entry.name,
    )
    classes = [entry.name for entry in class_dirs]
    files: list[str] = []
    labels: list[int] = []
    skipped: list[Skipped] = []
    for entry in os.scandir(root):
        if entry.is_file(follow_symlinks=False) and not _is_hidden(entry.name):
            skipped.append(Skipped(entry.name, "not inside a class folder"))
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
    scan = DatasetScan(root=root, classes=classes, files=files, labels=labels, skipped=skipped)
    scan.check_trainable()
    return scan


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
