"""The seed's recipe (shared/seed/000_*.txt, finetune_flowers17.py), faithfully, in Keras 2.

Keras 2 runs through ``tf_keras``; this module is the benchmark's baseline and is
never imported by the service. It follows the seed line by line:

* AspectAwarePreprocessor (shorter side to ``size``, centre crop) + ImageToArray;
  cv2.imread gives BGR, so the channels are flipped to BGR as the seed's model saw them;
* ``data / 255.0`` (the seed's preprocessing, not the backbone's ``preprocess_input``);
* ``train_test_split(test_size=0.25, random_state=42)``, reproduced with numpy
  (sklearn's ShuffleSplit permutation from ``RandomState(42)``), one-hot labels; the bench
  passes ``validation_files`` instead, the project's own (stratified, the same 0.25 share),
  so both recipes are judged on the same held-out images (``--seed-split`` keeps the seed's);
* ``ImageDataGenerator(rotation_range=30, width/height_shift_range=0.1,
  shear_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode="nearest")``;
* a base model without top, built on ``input_tensor``; FCHeadNet: Flatten ->
  Dense(D, relu) -> Dropout(0.5) -> Dense(classes, softmax);
* phase 1: every base layer frozen, RMSprop(1e-3), ``fit(aug.flow(..., 32),
  validation_data=(testX, testY), steps_per_epoch=len(trainX)//32, epochs=E)``;
* phase 2: base layers from ``unfreeze_from`` trainable, recompiled with SGD(1e-3)
  (the seed's "categoricla_crossentropy" typo is not copied), fit again.

Deviations, all without effect on speed: PIL instead of OpenCV for loading;
``weights="imagenet"`` is loaded through Keras 3 and copied layer by layer (tf_keras
ignores KERAS_HOME, see ``copy_imagenet_weights``);
float32 instead of float64 after ``/255`` (``aug.flow`` casts to float32 anyway);
the backbone is the bench's (MobileNet 0.25 by default; ``vgg16`` is the seed's own).
Kept as Keras 2 behaves: the backbone is not called with training=False, so with a
BatchNorm backbone (MobileNet) the unfrozen BatchNorm layers run in training mode in
phase 2 (VGG16, the seed's, has none); the project keeps them in inference mode.

Timing (per phase): ``fit_s`` is the wall time of ``model.fit`` (augmentation,
training, validation at each epoch end, first-call tracing); ``train_s`` the same
without the validations (each epoch from its start to its last batch's end); ``steady_ips`` is
``bench.timing.steady_ips`` over the batch-end clocks (each epoch's first batch
left out; input pipeline and augmentation in, validation out) — the same
definition the bench applies to the project's run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bench.data import list_images
from bench.timing import steady_ips
from finetune.ml.backbones import describe_layers, get_backbone
from finetune.ml.spec import TrainingSpec

SEED_AUGMENTATION = dict(
    rotation_range=30,
    width_shift_range=0.1,
    height_shift_range=0.1,
    shear_range=0.2,
    zoom_range=0.2,
    horizontal_flip=True,
    fill_mode="nearest",
)

# bench name -> tf_keras.applications constructor
_APPLICATIONS = {
    "vgg16": "VGG16",
    "vgg19": "VGG19",
    "resnet50": "ResNet50",
    "mobilenet": "MobileNet",
    "mobilenet_v2": "MobileNetV2",
    "efficientnet_b0": "EfficientNetB0",
}


@dataclass
class PhaseResult:
    epochs: int
    steps_per_epoch: int
    images: int  # training images seen (counted: a short last batch may be drawn)
    fit_s: float
    steady_ips: float  # see the module docstring
    train_s: float  # sum over epochs of (last batch end - epoch begin): training with tracing, without validation
    val_accuracy: float
    history: dict = field(default_factory=dict)

    @property
    def fit_ips(self) -> float:
        return self.images / self.fit_s if self.fit_s else 0.0

    @property
    def train_ips(self) -> float:
        return self.images / self.train_s if self.train_s else 0.0


@dataclass
class SeedResult:
    load_s: float
    num_train: int
    num_test: int
    classes: list[str]
    unfreeze_index: int | None
    warmup: PhaseResult
    finetune: PhaseResult | None

    def as_dict(self) -> dict:
        out = asdict(self)
        for phase in ("warmup", "finetune"):
            if out[phase] is not None:
                out[phase]["fit_ips"] = getattr(self, phase).fit_ips
                out[phase]["train_ips"] = getattr(self, phase).train_ips
        return out


def aspect_aware(image: Image.Image, size: int) -> Image.Image:
    """pyimagesearch's AspectAwarePreprocessor: shorter side to ``size``, centre crop, resize."""
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BOX)
    width, height = resized.size
    left, top = (width - size) // 2, (height - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    return cropped if cropped.size == (size, size) else cropped.resize((size, size), Image.BOX)


def load_dataset(root: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """SimpleDatasetLoader with [AspectAwarePreprocessor, ImageToArrayPreprocessor], then /255;
    also each image's path relative to ``root`` (posix)."""
    items = list_images(root)
    arrays = []
    for path, _ in items:
        with Image.open(path) as image:
            rgb = np.asarray(aspect_aware(image.convert("RGB"), size), dtype=np.float32)
        arrays.append(rgb[..., ::-1])  # cv2.imread order: BGR
    data = np.stack(arrays) / 255.0
    labels = np.array([label for _, label in items])
    names = [Path(path).relative_to(root).as_posix() for path, _ in items]
    return data.astype(np.float32), labels, sorted(set(labels)), names


def train_test_split(data: np.ndarray, labels: np.ndarray, test_size: float = 0.25, random_state: int = 42):
    """sklearn's ``train_test_split`` for arrays, without sklearn (same permutation, same sizes)."""
    count = len(data)
    n_test = int(np.ceil(test_size * count))
    permutation = np.random.RandomState(random_state).permutation(count)
    test, train = permutation[:n_test], permutation[n_test:]
    return data[train], data[test], labels[train], labels[test]


def one_hot(labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """LabelBinarizer's output for 3+ classes (one column per class, sorted)."""
    index = {name: i for i, name in enumerate(classes)}
    return np.eye(len(classes), dtype=np.float32)[[index[label] for label in labels]]


def build_seed_model(tf_keras, spec: TrainingSpec, classes: int):
    """baseModel = Application(include_top=False, input_tensor=Input(...)); FCHeadNet(base, classes, D)."""
    constructor = getattr(tf_keras.applications, _APPLICATIONS[spec.backbone])
    alpha = spec.effective_alpha
    base = constructor(
        weights=None,
        include_top=False,
        input_tensor=tf_keras.layers.Input(shape=(spec.image_size, spec.image_size, 3)),
        **({"alpha": alpha} if alpha is not None else {}),
    )
    if spec.weights == "imagenet":
        copy_imagenet_weights(spec, base)
    head = tf_keras.layers.Flatten(name="flatten")(base.output)
    head = tf_keras.layers.Dense(spec.head.units, activation="relu")(head)
    head = tf_keras.layers.Dropout(0.5)(head)
    head = tf_keras.layers.Dense(classes, activation="softmax")(head)
    return tf_keras.models.Model(inputs=base.input, outputs=head), base


def copy_imagenet_weights(spec: TrainingSpec, base) -> None:
    """The ImageNet weights through Keras 3's loader, copied layer by layer into the Keras 2 base.

    tf_keras only looks for weight files under ~/.keras (it ignores KERAS_HOME), so an
    offline host with the files under $KERAS_HOME/models would otherwise try to download.
    """
    source = get_backbone(spec.backbone).build(
        image_size=spec.image_size, weights="imagenet", alpha=spec.effective_alpha
    )
    if [layer.name for layer in source.layers[1:]] != [layer.name for layer in base.layers[1:]]:
        raise ValueError(f"{spec.backbone}: the Keras 3 and Keras 2 layer lists differ")
    for target, layer in zip(base.layers[1:], source.layers[1:]):  # [0]: the input, named differently
        target.set_weights(layer.get_weights())


def _counting(tf_keras, iterator):
    """``aug.flow(...)`` behind a transparent Sequence that records each batch's size.

    fit() may draw the short last batch (it shuffles the order of a Sequence's
    batches), so images seen are counted, not assumed to be steps * batch_size.
    Batches are produced in the order they are consumed.
    """

    class CountingSequence(tf_keras.utils.Sequence):
        def __init__(self):
            super().__init__()
            self.sizes: list[int] = []

        def __len__(self):
            return len(iterator)

        def __getitem__(self, index):
            x, y = iterator[index]
            self.sizes.append(len(x))
            return x, y

        def on_epoch_end(self):
            iterator.on_epoch_end()

    return CountingSequence()


def _batch_clock(tf_keras):
    class BatchClock(tf_keras.callbacks.Callback):
        """perf_counter() at the end of every training batch, one list per epoch."""

        def __init__(self):
            super().__init__()
            self.epochs: list[list[float]] = []
            self.begins: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.begins.append(time.perf_counter())
            self.epochs.append([])

        def on_train_batch_end(self, batch, logs=None):
            self.epochs[-1].append(time.perf_counter())

    return BatchClock()


def _fit_phase(tf_keras, model, aug, train, test, *, epochs: int, batch_size: int, verbose: int) -> PhaseResult:
    (trainX, trainY), (testX, testY) = train, test
    steps = len(trainX) // batch_size
    clock = _batch_clock(tf_keras)
    flow = _counting(tf_keras, aug.flow(trainX, trainY, batch_size=batch_size))
    start = time.perf_counter()
    history = model.fit(
        flow,
        validation_data=(testX, testY),
        epochs=epochs,
        steps_per_epoch=steps,
        callbacks=[clock],
        verbose=verbose,
    )
    fit_s = time.perf_counter() - start
    sizes = iter(flow.sizes)  # produced in the order consumed
    batches = [[(end, next(sizes)) for end in epoch] for epoch in clock.epochs]
    return PhaseResult(
        epochs=epochs,
        steps_per_epoch=steps,
        images=sum(size for epoch in batches for _, size in epoch),
        fit_s=fit_s,
        steady_ips=steady_ips(batches),
        train_s=sum(ends[-1] - begin for begin, ends in zip(clock.begins, clock.epochs) if ends),
        val_accuracy=float(history.history["val_accuracy"][-1]) if epochs else float("nan"),
        history={key: [float(v) for v in values] for key, values in history.history.items()},
    )


def _unfreeze_index(spec: TrainingSpec, base) -> int:
    """The project's index for ``unfreeze_from``, checked against this Keras 2 model's layer list."""
    index = spec.unfreeze_index
    expected = describe_layers(spec.backbone, spec.effective_alpha)[index]["name"]
    if base.layers[index].name != expected:
        raise ValueError(f"layer {index} is {base.layers[index].name} in tf_keras but {expected} in Keras 3")
    return index


def run_seed_recipe(
    data_dir: Path, spec: TrainingSpec, *, verbose: int = 0, validation_files: set[str] | None = None
) -> SeedResult:
    """Load, split, train the head (phase 1), fine-tune from ``spec.unfreeze_index`` (phase 2).

    From ``spec`` it takes the backbone, alpha, weights, image size, batch size, head
    units, seed and the two epoch counts; the rest is the seed's, whatever ``spec`` says.
    ``validation_files`` (paths relative to ``data_dir``) replaces the seed's random split.
    """
    import tf_keras

    tf_keras.utils.set_random_seed(spec.seed)
    start = time.perf_counter()
    data, labels, classes, names = load_dataset(Path(data_dir), spec.image_size)
    if validation_files is None:
        trainX, testX, trainY, testY = train_test_split(data, labels, test_size=0.25, random_state=42)
    else:
        held_out = np.array([name in validation_files for name in names])
        trainX, testX, trainY, testY = data[~held_out], data[held_out], labels[~held_out], labels[held_out]
    trainY, testY = one_hot(trainY, classes), one_hot(testY, classes)
    load_s = time.perf_counter() - start

    aug = tf_keras.preprocessing.image.ImageDataGenerator(**SEED_AUGMENTATION)
    model, base = build_seed_model(tf_keras, spec, len(classes))
    phase = dict(train=(trainX, trainY), test=(testX, testY), batch_size=spec.batch_size, verbose=verbose)

    for layer in base.layers:
        layer.trainable = False
    model.compile(
        loss="categorical_crossentropy", optimizer=tf_keras.optimizers.RMSprop(learning_rate=1e-3), metrics=["accuracy"]
    )
    warmup = _fit_phase(tf_keras, model, aug, epochs=spec.warmup.epochs, **phase)

    finetune, unfreeze = None, None
    if spec.finetune is not None:
        unfreeze = _unfreeze_index(spec, base)
        for layer in base.layers[unfreeze:]:
            layer.trainable = True
        model.compile(
            loss="categorical_crossentropy", optimizer=tf_keras.optimizers.SGD(learning_rate=1e-3), metrics=["accuracy"]
        )
        finetune = _fit_phase(tf_keras, model, aug, epochs=spec.finetune.epochs, **phase)

    return SeedResult(
        load_s=load_s,
        num_train=len(trainX),
        num_test=len(testX),
        classes=classes,
        unfreeze_index=unfreeze,
        warmup=warmup,
        finetune=finetune,
    )
