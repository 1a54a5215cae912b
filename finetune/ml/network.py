"""Small pure builders: the backbone, the seed's FCHeadNet head, the full model, the optimizers."""

from __future__ import annotations

import keras

from finetune.ml.backbones import get_backbone
from finetune.ml.spec import HeadSpec, PhaseSpec, TrainingSpec


def build_head(feature_shape: tuple[int, ...], *, head: HeadSpec, num_classes: int) -> keras.Model:
    """Flatten -> Dense(units, relu) -> Dropout -> Dense(classes, softmax), softmax kept in float32."""
    return keras.Sequential(
        [
            keras.Input(feature_shape),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(head.units, activation="relu", name="fc"),
            keras.layers.Dropout(head.dropout, name="dropout"),
            keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions"),
        ],
        name="head",
    )


def build_backbone(spec: TrainingSpec) -> keras.Model:
    backbone = get_backbone(spec.backbone).build(
        image_size=spec.image_size, weights=spec.weights, alpha=spec.effective_alpha
    )
    backbone.trainable = False
    return backbone


def assemble(backbone: keras.Model, head: keras.Model, *, image_size: int) -> keras.Model:
    """The classifier: the backbone called with training=False (BatchNorm stays in inference mode)."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    outputs = head(backbone(inputs, training=False))
    return keras.Model(inputs, outputs, name="classifier")


def build_model(spec: TrainingSpec, *, num_classes: int) -> tuple[keras.Model, keras.Model, keras.Model]:
    """(model, backbone, head) with every backbone layer frozen."""
    backbone = build_backbone(spec)
    head = build_head(tuple(backbone.output.shape[1:]), head=spec.head, num_classes=num_classes)
    return assemble(backbone, head, image_size=spec.image_size), backbone, head


def unfreeze_from(backbone: keras.Model, index: int) -> None:
    """Make the backbone layers from `index` on trainable, the rest frozen. Recompile afterwards.

    BatchNormalization layers stay frozen: in Keras 3 a frozen BatchNorm runs in inference mode,
    whereas `fit` would otherwise override the `training=False` of the backbone's call and let
    small fine-tuning batches rewrite the ImageNet statistics (keras-team/keras#20285).
    """
    backbone.trainable = True
    for position, layer in enumerate(backbone.layers):
        layer.trainable = position >= index and not isinstance(layer, keras.layers.BatchNormalization)


def make_optimizer(phase: PhaseSpec) -> keras.optimizers.Optimizer:
    if phase.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=phase.learning_rate, momentum=phase.momentum)
    if phase.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=phase.learning_rate)
    return keras.optimizers.Adam(learning_rate=phase.learning_rate)


def compile_for(model: keras.Model, phase: PhaseSpec, *, jit_compile: bool | str = "auto") -> None:
    model.compile(
        optimizer=make_optimizer(phase),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
