"""The input pipeline: decode each image once, then batch, augment and preprocess on the graph."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from finetune.errors import DomainError
from finetune.ml.devices import usable_cores
from finetune.ml.images import load_image
from finetune.ml.scan import DatasetScan
from finetune.ml.spec import AugmentationSpec

IN_MEMORY_LIMIT_BYTES = 4 * 1024**3
# Batches ready ahead of the model: a fixed few (each a float32 batch, ~19 MB at 224 px and batch 32),
# so the pipeline's memory is bounded whatever tf.data's autotuner would choose; measured no slower.
PREFETCH_BATCHES = 2


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` without tf.data's autotuning thread. Destroying an iterator waits for that thread,
    which sleeps between optimisations for up to a minute once a pipeline has run a while: at the
    end of a 25-epoch phase, Keras' `fit` then stalled for 33 s in about half the runs (measured;
    the iterator's destructor in TensorFlow 2.21 waiting on the thread's timed sleep). The
    parallelism it would tune is set by hand where it matters (`make_dataset`)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


@dataclass
class DecodedImages:
    """Every image of a scan decoded and resized once to `size`, as uint8, in memory or memory-mapped."""

    pixels: np.ndarray
    labels: np.ndarray
    scan: DatasetScan


def decode_dataset(
    scan: DatasetScan,
    *,
    size: int,
    max_pixels: int,
    cache_dir: Path | None = None,
    in_memory_limit: int = IN_MEMORY_LIMIT_BYTES,
    workers: int | None = None,
) -> DecodedImages:
    """Decode in parallel threads (Pillow releases the GIL); unreadable files move to `scan.skipped`.

    When the decoded set would exceed `in_memory_limit`, the array is a memory map under `cache_dir`.
    """
    count = len(scan.files)
    nbytes = count * size * size * 3
    if nbytes > in_memory_limit and cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        pixels = np.lib.format.open_memmap(
            cache_dir / f"decoded-{size}.npy", mode="w+", dtype=np.uint8, shape=(count, size, size, 3)
        )
    else:
        pixels = np.empty((count, size, size, 3), dtype=np.uint8)
    failures: dict[str, str] = {}

    def decode(index: int) -> None:
        relative = scan.files[index]
        try:
            pixels[index] = load_image(scan.root / relative, name=relative, size=size, max_pixels=max_pixels)
        except DomainError as error:
            failures[relative] = error.message

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        list(pool.map(decode, range(count)))
    if failures:
        keep = np.array([i for i, path in enumerate(scan.files) if path not in failures], dtype=np.int64)
        return DecodedImages(pixels=pixels[keep], labels=np.asarray(scan.labels)[keep], scan=scan.without(failures))
    return DecodedImages(pixels=pixels, labels=np.asarray(scan.labels, dtype=np.int64), scan=scan)


def bilinear_resample(images: tf.Tensor, transforms: tf.Tensor) -> tf.Tensor:
    """What `ImageProjectiveTransformV3` computes with bilinear interpolation and nearest fill
    (bit for bit on float32), in plain gathers and arithmetic that XLA compiles: TensorFlow's op has
    no XLA kernel, and compiled this runs about 5x its images/s on CPU.

    `transforms` holds one row [a0, a1, a2, b0, b1, b2, c0, c1] per image, mapping an output
    point (x, y) to the input point ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k), k = c0 x + c1 y + 1.
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    ys, xs = tf.meshgrid(tf.range(height_f), tf.range(width_f), indexing="ij")
    t = tf.cast(transforms, tf.float32)[:, :, None, None]
    k = t[:, 6] * xs + t[:, 7] * ys + 1.0
    x = tf.clip_by_value((t[:, 0] * xs + t[:, 1] * ys + t[:, 2]) / k, 0.0, width_f - 1.0)
    y = tf.clip_by_value((t[:, 3] * xs + t[:, 4] * ys + t[:, 5]) / k, 0.0, height_f - 1.0)
    x0, y0 = tf.floor(x), tf.floor(y)
    wx, wy = (x - x0)[..., None], (y - y0)[..., None]
    x0i, y0i = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    x1i, y1i = tf.minimum(x0i + 1, width - 1), tf.minimum(y0i + 1, height - 1)
    pixels = tf.reshape(tf.cast(images, tf.float32), [-1, images.shape[-1]])
    first_row = (tf.range(batch) * height * width)[:, None, None]

    def at(row, column):
        return tf.gather(pixels, first_row + row * width + column)

    top = at(y0i, x0i) * (1.0 - wx) + at(y0i, x1i) * wx
    bottom = at(y1i, x0i) * (1.0 - wx) + at(y1i, x1i) * wx
    return top * (1.0 - wy) + bottom * wy


def affine_transforms(*, theta, shift_x, shift_y, shear, zoom_x, zoom_y, flip, height, width) -> tf.Tensor:
    """Output-to-input transforms (rows of 8, see `bilinear_resample`) from one draw of parameters per
    image: angles in radians, shifts in pixels, zooms as scales, flip 0 or 1. The same draw gives the
    image Keras 2's `ImageDataGenerator.apply_transform` gives with theta, tx = shift_x, ty = shift_y,
    shear, zx = zoom_x, zy = zoom_y and flip_horizontal (in degrees where Keras 2 takes degrees), within
    interpolation (tests/finetune/test_pipeline.py). Keras 2 drew tx from height_shift_range x height and
    ty from width_shift_range x width; `RandomAffine` draws shift_x from width_shift x width: the same
    distribution for square images (the recipe's) and the seed's equal ranges."""
    theta, shift_x, shift_y, shear = (tf.cast(v, tf.float32) for v in (theta, shift_x, shift_y, shear))
    zoom_x, zoom_y, flip = (tf.cast(v, tf.float32) for v in (zoom_x, zoom_y, flip))
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    zeros, ones = tf.zeros_like(theta), tf.ones_like(theta)

    def matrix(*rows):
        return tf.reshape(tf.stack(rows, axis=-1), [-1, 3, 3])

    rotation = matrix(tf.cos(theta), -tf.sin(theta), zeros, tf.sin(theta), tf.cos(theta), zeros, zeros, zeros, ones)
    translation = matrix(ones, zeros, shift_x, zeros, ones, shift_y, zeros, zeros, ones)
    shearing = matrix(ones, -tf.sin(shear), zeros, zeros, tf.cos(shear), zeros, zeros, zeros, ones)
    zooming = matrix(zoom_x, zeros, zeros, zeros, zoom_y, zeros, zeros, zeros, ones)
    centre_x, centre_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    to_centre = matrix(ones, zeros, -centre_x * ones, zeros, ones, -centre_y * ones, zeros, zeros, ones)
    from_centre = matrix(ones, zeros, centre_x * ones, zeros, ones, centre_y * ones, zeros, zeros, ones)
    mirror = matrix(1.0 - 2.0 * flip, zeros, flip * (width - 1.0), zeros, ones, zeros, zeros, zeros, ones)
    output_to_input = from_centre @ rotation @ translation @ shearing @ zooming @ to_centre @ mirror
    return tf.reshape(output_to_input, [-1, 9])[:, :8]


class RandomAffine(keras.layers.Layer):
    """The seed's ImageDataGenerator augmentation as one projective transform per image.

    Rotation, shift, shear and zoom compose into one matrix (in the order Keras 2 used), a
    horizontal flip is folded in, and each image is resampled once (bilinear, nearest fill, as
    Keras 2's `apply_affine_transform`), instead of one pass per transform. `then` (e.g. the
    backbone's preprocessing) is compiled with the resampling into one XLA function.
    """

    def __init__(self, spec: AugmentationSpec, then: Callable | None = None, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self._after = then or (lambda images: images)
        self._resample = tf.function(
            lambda images, transforms: self._after(bilinear_resample(images, transforms)),
            jit_compile=True,
            autograph=False,
        )

    def get_config(self):
        return {**super().get_config(), "spec": self.spec.model_dump()}

    @classmethod
    def from_config(cls, config):
        return cls(AugmentationSpec.model_validate(config.pop("spec")), **config)

    def transforms(self, batch: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
        """A random output-to-input transform per image, as rows of 8 (see `bilinear_resample`)."""

        def uniform(limit: float):
            return tf.random.uniform([batch], -limit, limit)

        return affine_transforms(
            theta=uniform(math.radians(self.spec.rotation)),
            shift_x=uniform(self.spec.width_shift) * width,
            shift_y=uniform(self.spec.height_shift) * height,
            shear=uniform(math.radians(self.spec.shear)),
            zoom_x=1.0 + uniform(self.spec.zoom),
            zoom_y=1.0 + uniform(self.spec.zoom),
            flip=(
                tf.cast(tf.random.uniform([batch]) < 0.5, tf.float32)
                if self.spec.horizontal_flip
                else tf.zeros([batch])
            ),
            height=height,
            width=width,
        )

    def call(self, images, training=True):
        if not training:
            return self._after(tf.cast(images, tf.float32))
        shape = tf.shape(images)
        transforms = self.transforms(shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32))
        return self._resample(images, transforms)


def make_dataset(
    pixels: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    preprocess: Callable,
    augmentation: AugmentationSpec | RandomAffine | None = None,
    shuffle_seed: int | None = None,
    subset: np.ndarray | None = None,
    epochs: int = 1,
) -> tf.data.Dataset:
    """Batches of (preprocessed float32 images, int labels). Gathers whole batches: no Python per image.

    `pixels` (uint8, in memory or memory-mapped) and `labels` are the whole decoded set; `subset`
    (row indices) picks a split without copying the images, so the train and validation splits share one array.
    `augmentation` may be a `RandomAffine` built with `then=preprocess`, to share its compiled
    resampling between datasets (each new one compiles again, ~0.6 s on CPU).
    `epochs` passes over the split make one stream (each pass in a new order when shuffled, each
    ending with its short batch): the pipeline keeps running across a pass's end instead of
    draining and starting again, and nothing is prepared past the last pass.
    """
    rows = np.arange(len(labels)) if subset is None else np.asarray(subset, dtype=np.int64)
    count = len(rows)
    indices = tf.data.Dataset.from_tensor_slices(rows)
    if shuffle_seed is not None:
        indices = indices.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=True)
    indices = indices.batch(batch_size)
    if epochs != 1:
        indices = indices.repeat(epochs)
    label_tensor = tf.convert_to_tensor(labels, dtype=tf.int64)

    def gather(batch_indices):
        # numpy gathers the batch, its rows in file order (sequential reads from a memory map)
        ordered = tf.sort(batch_indices)
        images = tf.numpy_function(lambda rows: pixels[rows], [ordered], tf.uint8)
        return tf.ensure_shape(images, [None, *pixels.shape[1:]]), tf.gather(label_tensor, ordered)

    augment = (
        augmentation
        if isinstance(augmentation, RandomAffine) or augmentation is None
        else RandomAffine(augmentation, then=preprocess)
    )

    def load(batch_indices):
        # One map for gather, augmentation and preprocessing: with two, tf.data ran them at about
        # 2/3 of the images/s for the same CPU time (the handoff between the maps serialised them).
        images, batch_labels = gather(batch_indices)
        if augment is not None:
            return augment(images, training=True), batch_labels
        return preprocess(tf.cast(images, tf.float32)), batch_labels

    return without_autotune(indices.map(load, num_parallel_calls=usable_cores()).prefetch(PREFETCH_BATCHES))
