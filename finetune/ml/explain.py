"""Where the model looked: Grad-CAM (Selvaraju et al., 2017) on the backbone's last convolutional layer.

The class score's gradient with respect to that layer's activations, averaged over the image, weights
its channels; their weighted sum, through a ReLU, is the heatmap (at the layer's resolution, then
scaled to the image). One traced function per model, for any class."""

from __future__ import annotations

import io

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from finetune.ml.backbones import get_backbone

_CONV_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


def last_conv_layer(backbone: keras.Model) -> keras.layers.Layer:
    """The backbone's last convolution whose output still has a spatial extent."""
    for layer in reversed(backbone.layers):
        if isinstance(layer, _CONV_TYPES) and len(layer.output.shape) == 4:
            return layer
    raise ValueError(f"backbone {backbone.name!r} has no convolutional layer")


class GradCam:
    """Heatmaps of a saved classifier (input -> backbone -> head) for uint8 images of its size."""

    def __init__(self, model: keras.Model, manifest: dict):
        backbone, head_layers = model.layers[1], model.layers[2:]
        conv = last_conv_layer(backbone)
        self.layer_name = conv.name
        features = keras.Model(backbone.input, [conv.output, backbone.output])
        preprocess = get_backbone(manifest["backbone"]).preprocess()
        size = manifest["image_size"]

        @tf.function(
            input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8), tf.TensorSpec([], tf.int32)],
            autograph=False,
        )
        def heatmap(pixels, class_index):
            x = preprocess(tf.cast(pixels, tf.float32))
            with tf.GradientTape() as tape:
                activations, pooled = features(x, training=False)
                tape.watch(activations)
                y = pooled
                for layer in head_layers:
                    y = layer(y, training=False)
                score = y[:, class_index]
            gradients = tape.gradient(score, activations)
            weights = tf.reduce_mean(tf.cast(gradients, tf.float32), axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(activations, tf.float32), axis=-1))[0]
            return cam / (tf.reduce_max(cam) + 1e-12), y[0]

        self._heatmap = heatmap

    def explain(self, pixels: np.ndarray, class_index: int | None = None) -> tuple[np.ndarray, int, np.ndarray]:
        """(heatmap in [0, 1] at the image's size, the class explained, the class probabilities)."""
        if class_index is None:
            _, probabilities = self._heatmap(tf.constant(pixels[None]), tf.constant(0, tf.int32))
            class_index = int(np.argmax(probabilities))
        cam, probabilities = self._heatmap(tf.constant(pixels[None]), tf.constant(class_index, tf.int32))
        size = pixels.shape[:2]
        scaled = tf.image.resize(tf.convert_to_tensor(cam)[..., None], size, method="bilinear")[..., 0]
        return np.clip(scaled.numpy(), 0.0, 1.0), class_index, np.asarray(probabilities)


def overlay_png(pixels: np.ndarray, heatmap: np.ndarray, *, opacity: float = 0.5) -> bytes:
    """The image with the heatmap laid over it in a blue-to-red ramp, as PNG bytes."""
    ramp = np.stack([heatmap, 1.0 - np.abs(heatmap - 0.5) * 2.0, 1.0 - heatmap], axis=-1) * 255.0
    blended = (1.0 - opacity) * pixels.astype(np.float32) + opacity * ramp
    buffer = io.BytesIO()
    Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
