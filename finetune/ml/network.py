"""Small pure builders: the backbone, the seed's FCHeadNet head, the full model, the optimizers."""

from __future__ import annotations

import keras

from finetune.ml.backbones import get_backbone
from finetune.ml.spec import BATCHNORM_MODES, HeadSpec, PhaseSpec, TrainingSpec


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


def unfreeze_from(backbone: keras.Model, index: int, *, batchnorm: str = "frozen") -> None:
    """Make the backbone layers from `index` on trainable, the rest frozen. Recompile afterwards.

    batchnorm="frozen": BatchNormalization layers stay frozen; in Keras 3 a frozen BatchNorm runs in
    inference mode (its ImageNet moving statistics, γ and β kept) even inside `fit`.
    batchnorm="trainable": those from `index` on train too, as the seed's Keras 2 code had them:
    `fit` overrides the `training=False` of the backbone's call (keras-team/keras#20285), so they
    run in training mode (batch statistics; moving statistics, γ and β adapt to the new data).
    Layers before `index` stay frozen, BatchNorm included, in inference mode either way.
    """
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"unknown batchnorm {batchnorm!r}; choose one of {', '.join(BATCHNORM_MODES)}")
    backbone.trainable = True
    for position, layer in enumerate(backbone.layers):
        is_batchnorm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = position >= index and (batchnorm == "trainable" or not is_batchnorm)


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
