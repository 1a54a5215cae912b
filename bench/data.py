"""A synthetic class-per-folder JPEG dataset, or a user's folder, for the benchmarks.

Each class has its own hue and stripe period; every image jitters the hue, the
brightness and the stripes' angle and adds noise, so neighbouring classes overlap a
little and accuracy after a few epochs means something. Sizes vary around 256x200
so that resize/crop work is realistic.
"""

from __future__ import annotations

import colorsys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}

_PERIODS = (3, 5, 8, 11, 16, 24)  # stripe periods (px), cycled with a stride coprime to their count


def class_style(index: int, classes: int) -> tuple[float, int]:
    """(hue in [0, 1), stripe period in px) of class `index` out of `classes`."""
    return index / max(classes, 1), _PERIODS[(index * 5) % len(_PERIODS)]


def _class_image(
    rng: np.random.Generator, style: tuple[float, int], size: tuple[int, int], hue_jitter: float = 0.0
) -> Image.Image:
    """One noisy image in the class's hue (jittered) with stripes of the class's period."""
    (hue, period), (width, height) = style, size
    red, green, blue = colorsys.hsv_to_rgb(
        (hue + rng.uniform(-hue_jitter, hue_jitter)) % 1.0, rng.uniform(0.55, 0.85), rng.uniform(0.6, 0.9)
    )
    ys, xs = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, np.pi)
    phase = (xs * np.cos(angle) + ys * np.sin(angle)) / period
    stripes = (np.sin(2 * np.pi * phase) > 0).astype(np.float32)[..., None]
    base = 255.0 * np.asarray((red, green, blue), np.float32) * (0.7 + 0.3 * stripes)
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
    hue_jitter = 0.6 / max(classes, 1)  # +-60% of the hue step: neighbours overlap a little
    for index in range(classes):
        style = class_style(index, classes)
        folder = root / f"class_{index}"
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            jitter = rng.uniform(0.8, 1.2, size=2)
            image_size = (int(base_w * jitter[0]), int(base_h * jitter[1]))
            image = _class_image(rng, style, image_size, hue_jitter)
            image.save(folder / f"img_{number:04d}.jpg", quality=90)
    return root


def list_images(root: Path) -> list[tuple[Path, str]]:
    """(path, class name) for every image under ``root/<class>/``, sorted for determinism."""
    return [
        (path, path.parent.name) for path in sorted(Path(root).glob("*/*")) if path.suffix.lower() in IMAGE_EXTENSIONS
    ]


def describe(root: Path) -> dict:
    """Class names and image count of a class-per-folder dataset."""
    items = list_images(root)
    return {"classes": sorted({label for _, label in items}), "num_images": len(items)}


def sample_jpeg(path: Path, size: int = 224, seed: int = 1) -> bytes:
    """A ``size`` x ``size`` JPEG (for the /predict load test), written to ``path``; returns bytes."""
    image = _class_image(np.random.default_rng(seed), class_style(0, 1), (size, size))
    image.save(path, format="JPEG", quality=90)
    return Path(path).read_bytes()
