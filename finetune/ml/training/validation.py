"""Per-epoch validation on the held-out split, computing only what changed since the last epoch."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from finetune.ml.training.feeding import Forward, ImageFeeder, inference

# Keras' own clipping of probabilities in its cross-entropy, so val_loss reads as Keras would report it.
_EPSILON = 1e-7


def chain_start(backbone: keras.Model) -> int:
    """The first layer index from which on every layer is fed by the one before it alone: the backbone
    can be cut in two there (MobileNet, VGG: anywhere; MobileNetV2: after its last residual add)."""
    layers = backbone.layers
    try:
        for index in range(len(layers) - 1, 0, -1):
            parents = [t._keras_history.operation for t in layers[index]._inbound_nodes[0].input_tensors]
            if parents != [layers[index - 1]]:
                return index + 1
    except (AttributeError, IndexError):  # an unexpected graph: cut only after the backbone
        return len(layers)
    return 1


def validation_cut(backbone: keras.Model, cut: int, *, count: int, budget_bytes: int) -> int | None:
    """`cut` when the backbone can be cut there and the validation images' activations at the cut
    fit in `budget_bytes`; otherwise None (the whole model runs at every validation)."""
    layers = backbone.layers
    if not chain_start(backbone) <= cut <= len(layers):
        return None
    shape = backbone.output.shape if cut == len(layers) else layers[cut].input.shape
    nbytes = count * int(np.prod(shape[1:])) * tf.as_dtype(backbone.compute_dtype).size
    return cut if nbytes <= budget_bytes else None


class Validation:
    """The held-out split's class probabilities, and the metrics Keras' `fit` would log from them.

    The layers before `cut` stay frozen (and in inference mode) through the phases this serves, so
    their output on the validation images never changes: it is computed once, on the first run, and
    each epoch's validation runs only the layers from `cut` on and the head, one traced graph for
    every epoch of both phases. Without a usable cut, the whole model runs each time.
    The latest probabilities double as the evaluation of the phase that just ended, so evaluating
    costs no pass of its own.
    """

    def __init__(
        self,
        model: keras.Model,
        backbone: keras.Model,
        images: ImageFeeder | None,
        indices: np.ndarray,
        labels: np.ndarray,
        *,
        cut: int | None = None,
        features: np.ndarray | None = None,
    ):
        self.model, self.backbone, self.images, self.indices, self.cut = model, backbone, images, indices, cut
        self.labels = np.asarray(labels, dtype=np.int64)
        self.latest: np.ndarray | None = None
        self._run: Callable[[], np.ndarray] | None = None
        if features is not None:  # the head alone, on features already computed
            self._run = Forward.over(inference(model), features)

    @classmethod
    def of_features(cls, head: keras.Model, features: np.ndarray, labels: np.ndarray) -> Validation:
        """The head alone on features already computed."""
        return cls(head, head, None, np.arange(len(labels)), labels, features=features)

    def _prepare(self) -> None:
        if self.cut is None:
            run = self.images.mapper(inference(self.model))
            self._run = lambda: run(self.indices)
            return
        layers = self.backbone.layers
        prefix = self.backbone if self.cut == len(layers) else keras.Model(self.backbone.input, layers[self.cut].input)
        activations = self.images.mapper(inference(prefix))(self.indices)
        suffix = [*layers[self.cut :], *self.model.layers[2:]]  # the classifier: input, backbone, head

        def rest(x):
            for layer in suffix:
                x = layer(x, training=False)
            return x

        self._run = Forward.over(rest, activations)

    def run(self) -> dict:
        if not len(self.labels):
            return {}
        if self._run is None:
            self._prepare()
        probabilities = self._run().astype(np.float32)
        self.latest = probabilities
        picked = probabilities[np.arange(len(self.labels)), self.labels]
        return {
            "val_loss": float(-np.mean(np.log(np.clip(picked, _EPSILON, 1.0 - _EPSILON)))),
            "val_accuracy": float(np.mean(np.argmax(probabilities, axis=-1) == self.labels)),
        }

    def predicted_labels(self) -> np.ndarray:
        """Labels from the latest run; runs now if none did since the weights last changed."""
        if self.latest is None:
            self.run()
        if self.latest is None:
            return np.zeros((0,), dtype=np.int64)
        return np.argmax(self.latest, axis=-1)
