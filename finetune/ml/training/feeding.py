"""Feeding arrays to traced functions batch by batch, outside tf.data where tf.data costs more than it gives."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from finetune.ml.pipeline import without_autotune

# Rows per call of the head on cached features (small tensors: one call per few hundred rows).
FEATURE_BATCH = 256


def inference(model: keras.Model) -> Callable:
    """`model` as a function in inference mode (BatchNorm on its moving statistics, no dropout)."""
    return lambda x: model(x, training=False)


class Forward:
    """`fn(x)` over a dataset's batches, traced once: the batch dimension is left unknown, so the short
    last batch, later epochs and the next phase all reuse the one graph (Keras' own `predict` and
    `evaluate` trace again for each, and again after every compile)."""

    def __init__(self, fn: Callable, element: tf.TensorSpec):
        self._call = tf.function(
            fn, input_signature=[tf.TensorSpec([None, *element.shape[1:]], element.dtype)], autograph=False
        )

    def __call__(self, batches: tf.data.Dataset) -> np.ndarray:
        """The outputs for every batch, in order; a batch may be `x` or `(x, labels)`."""
        outputs = [self._call(x[0] if isinstance(x, tuple) else x).numpy() for x in batches]
        return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)

    @classmethod
    def over(cls, fn: Callable, arrays: np.ndarray) -> Callable[[], np.ndarray]:
        """`run()`: `fn` over all of `arrays` (already in memory), in batches of FEATURE_BATCH."""
        forward = cls(fn, tf.TensorSpec(arrays.shape, arrays.dtype))
        batches = without_autotune(tf.data.Dataset.from_tensor_slices(arrays).batch(FEATURE_BATCH))
        return lambda: forward(batches)


class ImageFeeder:
    """The decoded images (a uint8 array, in memory or memory-mapped) fed to functions by row indices,
    batch by batch, with the cast and the preprocessing on the function's own graph. For passes without
    augmentation (features, validation) this replaces a tf.data pipeline, whose threads, competing
    with the forward pass for two cores, slowed it by about a third."""

    def __init__(self, pixels: np.ndarray, preprocess: Callable, batch_size: int):
        self.pixels, self.preprocess, self.batch_size = pixels, preprocess, batch_size

    def mapper(self, fn: Callable) -> Callable[[np.ndarray], np.ndarray]:
        """`run(indices)`: `fn` of the preprocessed images at `indices`, in order, traced once for any indices."""
        preprocess, pixels = self.preprocess, self.pixels
        traced = tf.function(
            lambda images: fn(preprocess(tf.cast(images, tf.float32))),
            input_signature=[tf.TensorSpec([None, *pixels.shape[1:]], tf.uint8)],
            autograph=False,
        )

        def call(batch):
            order = np.argsort(batch)  # read the array in file order, then restore the batch's order
            images = np.empty((len(batch), *pixels.shape[1:]), np.uint8)
            images[order] = pixels[batch[order]]
            return traced(images)

        def run(indices: np.ndarray) -> np.ndarray:
            indices = np.asarray(indices, dtype=np.int64)
            outputs = [
                call(indices[start : start + self.batch_size]).numpy()
                for start in range(0, len(indices), self.batch_size)
            ]
            return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)

        return run


def feature_stream(
    features: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int, epochs: int
) -> tf.data.Dataset:
    """Cached features and their labels, reshuffled every epoch, for `epochs` epochs."""
    return without_autotune(
        tf.data.Dataset.from_tensor_slices((features, labels))
        .shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .repeat(epochs)
    )
