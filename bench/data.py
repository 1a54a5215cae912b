"""A synthetic class-per-folder JPEG dataset, or a user's folder, for the benchmarks.

Each class has its own base colour and stripe texture, so a classifier can tell
them apart; sizes vary around 256x200 so that resize/crop work is realistic.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}

# (R, G, B) base colour and stripe period (px) per class; cycled if more classes are asked for.
_CLASS_STYLES = [
    ((200, 40, 40), 8),
    ((40, 170, 60), 16),
    ((40, 60, 200), 5),
    ((210, 190, 40), 24),
    ((150, 50, 170), 11),
    ((30, 170, 170), 3),
]


def _class_image(rng: np.random.Generator, style: tuple, size: tuple[int, int]) -> Image.Image:
    """One noisy image in the class's colour with stripes of the class's period."""
    (colour, period), (width, height) = style, size
    ys, xs = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, np.pi)
    phase = (xs * np.cos(angle) + ys * np.sin(angle)) / period
    stripes = (np.sin(2 * np.pi * phase) > 0).astype(np.float32)[..., None]
    base = np.asarray(colour, np.float32) * (0.7 + 0.3 * stripes)
    noise = rng.normal(0, 25, size=(height, width, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def generate_dataset(
    root: Path | None = None,
    classes: int = 5,
    per_class: int = 40,
    size: tuple[int, int] = (256, 200),
    seed: int = 0,
) -> Path:
    """Write ``classes`` folders of ``per_class`` JPEGs under ``root`` (a new tmp dir if None)."""
    root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="bench-data-"))
    rng = np.random.default_rng(seed)
    base_w, base_h = size
    for index in range(classes):
        style = _CLASS_STYLES[index % len(_CLASS_STYLES)]
        folder = root / f"class_{index}"
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            jitter = rng.uniform(0.8, 1.2, size=2)
            image_size = (int(base_w * jitter[0]), int(base_h * jitter[1]))
            image = _class_image(rng, style, image_size)
            image.save(folder / f"img_{number:04d}.jpg", quality=90)
    return root


def list_images(root: Path) -> list[tuple[Path, str]]:
    """(path, class name) for every image under ``root/<class>/``, sorted for determinism."""
    return [
        (path, path.parent.name)
        for path in sorted(Path(root).glob("*/*"))
        if path.suffix.lower() in IMAGE_EXTENSIONS
    ]


def describe(root: Path) -> dict:
    """Class names and image count of a class-per-folder dataset."""
    items = list_images(root)
    return {"classes": sorted({label for _, label in items}), "num_images": len(items)}


def sample_jpeg(path: Path, size: int = 224, seed: int = 1) -> bytes:
    """A ``size`` x ``size`` JPEG (for the /predict load test), written to ``path``; returns bytes."""
    image = _class_image(np.random.default_rng(seed), _CLASS_STYLES[0], (size, size))
    image.save(path, format="JPEG", quality=90)
    return Path(path).read_bytes()
