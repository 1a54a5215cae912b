"""The builders: the FCHeadNet head, the frozen backbone, unfreezing, optimizers and compiling."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from finetune.ml.network import build_head, build_model, compile_for, make_optimizer, unfreeze_from
from finetune.ml.spec import HeadSpec, PhaseSpec, TrainingSpec

SPEC = TrainingSpec(backbone="mobilenet", alpha=0.25, weights="none", image_size=32, head={"units": 16, "dropout": 0.3})


@pytest.fixture(scope="module")
def built():
    keras.utils.set_random_seed(0)
    return build_model(SPEC, num_classes=3)


def test_head_is_flatten_dense_relu_dropout_dense_softmax():
    head = build_head((2, 2, 8), head=HeadSpec(units=12, dropout=0.25), num_classes=4)
    layers = head.layers
    assert [type(layer).__name__ for layer in layers] == ["Flatten", "Dense", "Dropout", "Dense"]
    flatten, fc, dropout, predictions = layers
    assert fc.units == 12 and fc.activation is keras.activations.relu
    assert dropout.rate == 0.25
    assert predictions.units == 4 and predictions.activation is keras.activations.softmax
    assert head.input_shape == (None, 2, 2, 8)
    assert head.output_shape == (None, 4)
    assert fc.kernel.shape == (2 * 2 * 8, 12)


def test_head_softmax_stays_float32_under_mixed_precision():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        head = build_head((2, 2, 8), head=HeadSpec(units=4), num_classes=3)
        assert head.layers[1].compute_dtype == "float16"
        assert head.layers[-1].compute_dtype == "float32"
        output = head(np.ones((2, 2, 2, 8), np.float32))
        assert output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_build_model_returns_the_classifier_with_a_frozen_backbone(built):
    model, backbone, head = built
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 3)
    assert backbone.name.startswith("mobilenet")
    assert model.layers[1] is backbone and model.layers[2] is head
    assert backbone.trainable is False
    assert backbone.trainable_weights == []
    assert len(backbone.non_trainable_weights) > 0
    trainable = {id(weight) for weight in model.trainable_weights}
    assert trainable == {id(weight) for weight in head.trainable_weights}
    assert len(head.trainable_weights) == 4  # fc kernel+bias, predictions kernel+bias
    assert head.layers[1].units == 16 and head.layers[2].rate == 0.3


def test_the_classifiers_outputs_are_probabilities(built):
    model, _, _ = built
    probabilities = np.asarray(model(np.random.default_rng(0).uniform(-1, 1, (5, 32, 32, 3)).astype("float32")))
    assert probabilities.shape == (5, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()


def test_build_model_without_alpha_uses_the_backbones_default():
    spec = TrainingSpec(backbone="vgg16", weights="none", image_size=32, head={"units": 4})
    model, backbone, _ = build_model(spec, num_classes=2)
    assert backbone.name == "vgg16"
    assert len(backbone.layers) == 19
    assert backbone.output_shape == (None, 1, 1, 512)
    assert model.output_shape == (None, 2)


@pytest.mark.parametrize("index", [0, 40, 80, 85])
def test_unfreeze_from_makes_exactly_the_later_layers_trainable(index):
    _, backbone, _ = build_model(SPEC, num_classes=2)
    unfreeze_from(backbone, index)
    assert backbone.trainable is True
    for position, layer in enumerate(backbone.layers):
        is_batchnorm = isinstance(layer, keras.layers.BatchNormalization)
        assert layer.trainable is (position >= index and not is_batchnorm), (position, layer.name)
    later = {id(w) for layer in backbone.layers[index:] for w in layer.trainable_weights}
    assert {id(w) for w in backbone.trainable_weights} == later
    assert all(not layer.trainable_weights for layer in backbone.layers[:index])
    if index <= 80:
        assert later


def test_unfreeze_from_again_refreezes_the_earlier_layers():
    _, backbone, _ = build_model(SPEC, num_classes=2)
    unfreeze_from(backbone, 10)
    unfreeze_from(backbone, 80)
    assert [layer.trainable for layer in backbone.layers[:80]] == [False] * 80
    assert all(
        layer.trainable for layer in backbone.layers[80:] if not isinstance(layer, keras.layers.BatchNormalization)
    )


def snapshot(weights) -> list[np.ndarray]:
    return [np.array(w.numpy(), copy=True) for w in weights]


@pytest.fixture
def finetune_step():
    """A mobilenet classifier unfrozen from its default index, compiled, before and after one SGD step."""
    keras.utils.set_random_seed(1)
    model, backbone, _ = build_model(SPEC, num_classes=2)
    index = SPEC.unfreeze_index  # conv_dw_13
    unfreeze_from(backbone, index)
    compile_for(model, PhaseSpec(epochs=1, optimizer="sgd", learning_rate=0.1), jit_compile=False)
    before = snapshot(backbone.weights)
    head_before = snapshot(model.layers[-1].weights)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    model.train_on_batch(x, np.array([0, 1, 0, 1]))
    head_moved = any(not np.array_equal(a, w.numpy()) for a, w in zip(head_before, model.layers[-1].weights))
    assert head_moved, "the training step changed nothing"
    return backbone, index, dict(zip((w.path for w in backbone.weights), before))


def test_a_finetune_step_leaves_the_frozen_layers_alone(finetune_step):
    backbone, index, before = finetune_step
    for layer in backbone.layers[:index]:
        for weight in layer.weights:
            np.testing.assert_array_equal(before[weight.path], weight.numpy(), err_msg=weight.path)
    # (a random-init MobileNet's activations vanish by its last block, so the unfrozen kernels'
    # gradients are ~1e-16: which weights may move is asserted above, through trainable_weights)


def test_a_finetune_step_keeps_batchnorm_statistics(finetune_step):
    backbone, index, before = finetune_step
    bn = [layer for layer in backbone.layers[index:] if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn
    for layer in bn:
        for weight in (layer.moving_mean, layer.moving_variance):
            np.testing.assert_array_equal(before[weight.path], weight.numpy(), err_msg=weight.path)


@pytest.mark.parametrize(
    ("name", "cls"),
    [("sgd", keras.optimizers.SGD), ("rmsprop", keras.optimizers.RMSprop), ("adam", keras.optimizers.Adam)],
)
def test_make_optimizer_builds_the_named_optimizer_with_the_rate(name, cls):
    optimizer = make_optimizer(PhaseSpec(epochs=1, optimizer=name, learning_rate=0.0123))
    assert type(optimizer) is cls
    assert float(optimizer.learning_rate) == pytest.approx(0.0123)


def test_sgd_gets_the_momentum():
    optimizer = make_optimizer(PhaseSpec(epochs=1, optimizer="sgd", learning_rate=0.01, momentum=0.9))
    assert optimizer.momentum == pytest.approx(0.9)
    assert make_optimizer(PhaseSpec(epochs=1, optimizer="sgd", learning_rate=0.01)).momentum == 0.0


def test_compile_for_sets_the_phases_optimizer_loss_and_accuracy():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    compile_for(model, PhaseSpec(epochs=1, optimizer="rmsprop", learning_rate=0.002), jit_compile=False)
    assert isinstance(model.optimizer, keras.optimizers.RMSprop)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.002)
    assert model.loss == "sparse_categorical_crossentropy"
    logs = model.evaluate(np.zeros((4, 3)), np.array([0, 1, 0, 1]), verbose=0, return_dict=True)
    assert set(logs) >= {"loss", "accuracy"}
    assert logs["accuracy"] == pytest.approx(0.5)


# --- finetune.batchnorm: which BatchNorm layers train in phase 2 -----------------------------


@pytest.mark.parametrize("index", [40, 80])
def test_unfreeze_from_with_batchnorm_trainable_trains_the_later_batchnorm_too(index):
    _, backbone, _ = build_model(SPEC, num_classes=2)
    unfreeze_from(backbone, index, batchnorm="trainable")
    for position, layer in enumerate(backbone.layers):
        assert layer.trainable is (position >= index), (position, layer.name)
    later_bn = [layer for layer in backbone.layers[index:] if isinstance(layer, keras.layers.BatchNormalization)]
    assert later_bn
    trainable = {id(w) for w in backbone.trainable_weights}
    for layer in later_bn:  # gamma and beta train; the moving statistics are updated, not trained
        assert {id(layer.gamma), id(layer.beta)} <= trainable
        assert id(layer.moving_mean) not in trainable
    assert all(not layer.trainable_weights for layer in backbone.layers[:index])


def test_unfreeze_from_refuses_an_unknown_batchnorm_mode():
    _, backbone, _ = build_model(SPEC, num_classes=2)
    with pytest.raises(ValueError, match="batchnorm"):
        unfreeze_from(backbone, 80, batchnorm="train")


def batchnorm_step(mode: str):
    """One fit step of a classifier unfrozen from conv_dw_12 with `mode`: the BatchNorm weights before it."""
    keras.utils.set_random_seed(2)
    spec = SPEC.model_copy(update={"finetune": SPEC.finetune.model_copy(update={"unfreeze_from": "conv_dw_12"})})
    model, backbone, _ = build_model(spec, num_classes=2)
    unfreeze_from(backbone, spec.unfreeze_index, batchnorm=mode)
    compile_for(model, PhaseSpec(epochs=1, optimizer="sgd", learning_rate=0.1), jit_compile=False)
    before = {w.path: np.array(w.numpy(), copy=True) for w in backbone.weights}
    x = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    model.fit(x, np.array([0, 1] * 4), batch_size=8, epochs=1, verbose=0)  # fit: training=True overrides
    return backbone, spec.unfreeze_index, before


def test_trainable_batchnorm_runs_in_training_mode_in_fit_and_only_from_the_unfreeze_index():
    """As Keras 2 had it: `fit`'s training=True reaches the unfrozen BatchNorm layers through the
    backbone's training=False call, so their moving statistics follow the batches; earlier ones keep theirs."""
    backbone, index, before = batchnorm_step("trainable")
    for position, layer in enumerate(backbone.layers):
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        moved = not np.array_equal(before[layer.moving_variance.path], layer.moving_variance.numpy())
        assert moved is (position >= index), (position, layer.name)


def test_frozen_batchnorm_keeps_its_statistics_in_fit():
    backbone, _, before = batchnorm_step("frozen")
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for weight in layer.weights:
                np.testing.assert_array_equal(before[weight.path], weight.numpy(), err_msg=weight.path)
