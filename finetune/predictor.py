"""Serving a saved model: the same preprocessing as training, fixed batch shapes traced once at load."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.backbones import get_backbone
from finetune.images import load_image

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)


@dataclass
class ImageInput:
    name: str
    data: bytes


def bucket_for(count: int, buckets: tuple[int, ...] = BATCH_BUCKETS) -> int:
    return next((bucket for bucket in buckets if bucket >= count), buckets[-1])


class Predictor:
    """One loaded model. `predict_pixels` pads each batch to a bucket size, so every call reuses
    one of a few traced graphs, all traced by `warm_up` before the first request."""

    def __init__(self, model_path: str | Path, manifest: dict, *, max_batch: int = 32):
        import keras
        import tensorflow as tf

        self.manifest = manifest
        self.model_id = manifest["id"]
        self.classes: list[str] = manifest["classes"]
        self.image_size: int = manifest["image_size"]
        self.buckets = tuple(bucket for bucket in BATCH_BUCKETS if bucket <= max_batch) or (1,)
        self.model = keras.models.load_model(model_path, compile=False)
        preprocess = get_backbone(manifest["backbone"]).preprocess()
        model = self.model

        @tf.function(input_signature=[tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.uint8)],
                     reduce_retracing=True)
        def forward(pixels):
            return model(preprocess(tf.cast(pixels, tf.float32)), training=False)

        self._forward = forward
        self._concrete = {}

    def warm_up(self) -> None:
        """Trace and run every bucket once, so no request pays TensorFlow's tracing."""
        import tensorflow as tf

        for bucket in self.buckets:
            spec = tf.TensorSpec([bucket, self.image_size, self.image_size, 3], tf.uint8)
            self._concrete[bucket] = self._forward.get_concrete_function(spec)
            self._concrete[bucket](tf.zeros([bucket, self.image_size, self.image_size, 3], tf.uint8))

    def load_pixels(self, image: ImageInput, *, max_pixels: int) -> np.ndarray:
        """Decode and resize exactly as training did; raises BadImage/NotAnImage naming the file."""
        return load_image(image.data, name=image.name, size=self.image_size, max_pixels=max_pixels)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for a uint8 batch of shape (n, size, size, 3)."""
        import tensorflow as tf

        outputs = []
        for start in range(0, len(pixels), self.buckets[-1]):
            chunk = pixels[start:start + self.buckets[-1]]
            bucket = bucket_for(len(chunk), self.buckets)
            padded = np.zeros((bucket, *chunk.shape[1:]), dtype=np.uint8)
            padded[: len(chunk)] = chunk
            function = self._concrete.get(bucket) or self._forward
            outputs.append(np.asarray(function(tf.constant(padded)))[: len(chunk)])
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.classes)), dtype=np.float32)

    def top_k(self, probabilities: np.ndarray, k: int) -> list[list[dict]]:
        k = max(1, min(k, len(self.classes)))
        results = []
        for row in probabilities:
            order = np.argsort(row)[::-1][:k]
            results.append([{"label": self.classes[i], "probability": float(row[i])} for i in order])
        return results

    def predict(self, images: list[ImageInput], *, top_k: int = 5, max_pixels: int = 50_000_000) -> list[dict]:
        pixels = np.stack([self.load_pixels(image, max_pixels=max_pixels) for image in images])
        return [
            {"filename": image.name, "predictions": predictions}
            for image, predictions in zip(images, self.top_k(self.predict_pixels(pixels), top_k))
        ]


class PredictorCache:
    """Loaded predictors, least recently used evicted beyond `size`. Each model loads once even
    when several requests ask for it at the same moment."""

    def __init__(self, store, *, size: int, max_batch: int = 32):
        self.store, self.size, self.max_batch = store, max(1, size), max_batch
        self._predictors: OrderedDict[str, Predictor] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, model_id: str | None) -> Predictor:
        manifest = self.store.get(model_id) if model_id else self.store.newest()
        model_id = manifest["id"]
        with self._lock:
            if model_id in self._predictors:
                self._predictors.move_to_end(model_id)
                return self._predictors[model_id]
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:
            with self._lock:
                if model_id in self._predictors:
                    return self._predictors[model_id]
            predictor = Predictor(self.store.model_file(model_id), manifest, max_batch=self.max_batch)
            predictor.warm_up()
            with self._lock:
                self._predictors[model_id] = predictor
                self._loading.pop(model_id, None)
                while len(self._predictors) > self.size:
                    self._predictors.popitem(last=False)
            return predictor

    def evict(self, model_id: str) -> None:
        with self._lock:
            self._predictors.pop(model_id, None)

    def __len__(self) -> int:
        return len(self._predictors)

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return list(self._predictors)
