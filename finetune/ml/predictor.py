"""Serving a saved model: the same preprocessing as training, one traced function warmed at load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.errors import InvalidSpec
from finetune.ml.backbones import get_backbone
from finetune.ml.images import load_image
from finetune.ml.thresholds import decide

WARM_BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def set_threads_per_op(threads: int) -> bool:
    """Run each TensorFlow op of this process on `threads` threads (0: TensorFlow's default, every
    core). For serving, 1 thread per pass and one pass per core: on 2 cores, MobileNet 0.25 in two
    single-thread passes at batch 4 forwarded 733 images/s, one pass on both cores at batch 8 only 338,
    and a lone image took 2.8 instead of 6.4 ms: small ops lose more to handing work between threads
    than they gain. Only possible before TensorFlow runs its first op; returns False after (nothing changed)."""
    if not threads:
        return True
    import tensorflow as tf

    if tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return True
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already initialised in this process
        return False
    return True


def input_scaling_of(manifest: dict) -> str:
    """The input scaling the model was trained with (its spec's); manifests from before the option: "backbone"."""
    return (manifest.get("spec") or {}).get("input_scaling", "backbone")


@dataclass
class ImageInput:
    name: str
    data: bytes


class Predictor:
    """One loaded model. Every batch runs through one function traced for any batch size, at its
    own size: padding to a few fixed sizes (what a traced function per size would need) cost up to
    60% more compute (5 images run as 8), while the shape-free graph runs as fast as fixed ones
    (MobileNet on CPU, batch 1/4/8: within 4%). `warm_up` traces it and runs the common sizes,
    so no request pays tracing; an unseen size pays only its kernels' set-up once (~20% of a pass).
    Batches above `max_batch` run in chunks of it."""

    def __init__(self, model_path: str | Path, manifest: dict, *, max_batch: int = 32):
        import keras
        import tensorflow as tf

        self.manifest = manifest
        self.model_id = manifest["id"]
        self.classes: list[str] = manifest["classes"]
        self.image_size: int = manifest["image_size"]
        self.max_batch = max(1, max_batch)
        self.warm_sizes = tuple(size for size in WARM_BATCH_SIZES if size <= self.max_batch) or (1,)
        self.model = keras.models.load_model(model_path, compile=False)
        preprocess = get_backbone(manifest["backbone"]).preprocess(input_scaling_of(manifest))
        model = self.model

        @tf.function(
            input_signature=[tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.uint8)], autograph=False
        )  # no Python control flow to convert, and no generated file in TMPDIR
        def forward(pixels):
            return model(preprocess(tf.cast(pixels, tf.float32)), training=False)

        self._forward = forward
        self._gradcam = None
        self._concrete = None

    def warm_up(self) -> None:
        """Trace once and run the common batch sizes, so no request pays tracing."""
        import tensorflow as tf

        self._concrete = self._forward.get_concrete_function()
        for size in self.warm_sizes:
            self._concrete(tf.zeros([size, self.image_size, self.image_size, 3], tf.uint8))

    def load_pixels(self, image: ImageInput, *, max_pixels: int) -> np.ndarray:
        """Decode and resize exactly as training did; raises BadImage/NotAnImage naming the file."""
        return load_image(image.data, name=image.name, size=self.image_size, max_pixels=max_pixels)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for a uint8 batch of shape (n, size, size, 3)."""
        import tensorflow as tf

        function = self._concrete or self._forward
        outputs = [
            np.asarray(function(tf.constant(pixels[start : start + self.max_batch], dtype=tf.uint8)))
            for start in range(0, len(pixels), self.max_batch)
        ]
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.classes)), dtype=np.float32)

    def top_k(self, probabilities: np.ndarray, k: int) -> list[list[dict]]:
        """Per row, the `k` most probable classes, most probable first (one sort of the whole array)."""
        k = max(1, min(k, len(self.classes)))
        order = np.argsort(probabilities, axis=1)[:, ::-1][:, :k]
        picked = np.take_along_axis(probabilities, order, axis=1).tolist()
        classes = self.classes
        return [
            [{"label": classes[i], "probability": p} for i, p in zip(indices, values)]
            for indices, values in zip(order.tolist(), picked)
        ]

    def explain(self, pixels: np.ndarray, class_name: str | None = None) -> tuple[bytes, str, float]:
        """A Grad-CAM overlay (PNG) of one image for `class_name` (default: its top class); the class
        explained and its probability. The Grad-CAM function is traced once, on first use."""
        from finetune.ml.explain import GradCam, overlay_png

        if class_name is not None and class_name not in self.classes:
            raise InvalidSpec(f"unknown class {class_name!r}; the model's classes are {', '.join(self.classes)}")
        if self._gradcam is None:
            self._gradcam = GradCam(self.model, self.manifest)
        index = None if class_name is None else self.classes.index(class_name)
        heatmap, index, probabilities = self._gradcam.explain(pixels, index)
        return overlay_png(pixels, heatmap), self.classes[index], float(probabilities[index])

    @property
    def thresholds(self) -> dict[str, float | None]:
        """The per-class thresholds of the manifest ({} when none were set: nothing abstains)."""
        per_class = (self.manifest.get("thresholds") or {}).get("per_class") or {}
        return {name: row.get("threshold") for name, row in per_class.items()}

    def results(
        self, names: list[str], probabilities: np.ndarray, *, top_k: int, threshold: float | None = None
    ) -> list[dict]:
        """Per image: `label` (its top-1 class, or None when it abstains: the top-1 probability below its
        class's threshold, or below `threshold` for every class when given), `abstained`, the top-k list."""
        labels = decide(probabilities, self.classes, self.thresholds, override=threshold)
        return [
            {"filename": name, "label": label, "abstained": label is None, "predictions": predictions}
            for name, label, predictions in zip(names, labels, self.top_k(probabilities, top_k))
        ]

    def predict(
        self, images: list[ImageInput], *, top_k: int = 5, max_pixels: int = 50_000_000, threshold: float | None = None
    ) -> list[dict]:
        pixels = np.stack([self.load_pixels(image, max_pixels=max_pixels) for image in images])
        return self.results(
            [image.name for image in images], self.predict_pixels(pixels), top_k=top_k, threshold=threshold
        )
