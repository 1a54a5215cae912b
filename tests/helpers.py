"""Test data generators: small colour images and dataset archives, classes told apart by colour."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor

Color = str | tuple[int, int, int]


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
