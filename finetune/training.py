"""The two-phase recipe of the seed: train the head on a frozen backbone, then fine-tune its last block."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from finetune.backbones import get_backbone
from finetune.checkpoint import Checkpointer
from finetune.dataset import Skipped, scan_dataset, stratified_split
from finetune.devices import DevicePlan, apply_precision, detect_gpus, make_strategy, plan_devices
from finetune.errors import JobCancelled
from finetune.evaluation import evaluate_predictions
from finetune.model import assemble, build_backbone, build_head, compile_for, unfreeze_from
from finetune.pipeline import RandomAffine, decode_dataset, make_dataset, without_autotune
from finetune.spec import PhaseSpec, TrainingSpec

# Keras' own clipping of probabilities in its cross-entropy, so val_loss reads as Keras would report it.
_EPSILON = 1e-7
# Rows per call of the head on cached features (small tensors: one call per few hundred rows).
_FEATURE_BATCH = 256


@dataclass
class ProgressEvent:
    """What a progress callback receives. `epoch` is 1-based within the phase; `metrics` is set at epoch end."""

    phase: str
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    metrics: dict | None = None
    history: list[dict] | None = None


@dataclass
class TrainResult:
    model: keras.Model
    spec: TrainingSpec
    classes: list[str]
    metrics: dict
    warmup_metrics: dict | None
    history: list[dict]
    timings: dict
    skipped: list[Skipped] = field(default_factory=list)
    num_train: int = 0
    num_validation: int = 0


ProgressFn = Callable[[ProgressEvent], None]
CancelFn = Callable[[], bool]


class _Forward:
    """`fn(x)` over a dataset's batches, traced once: the batch dimension is left unknown, so the short
    last batch, later epochs and the next phase all reuse the one graph (Keras' own `predict` and
    `evaluate` trace again for each, and again after every compile)."""

    def __init__(self, fn: Callable, element: tf.TensorSpec):
        self._call = tf.function(fn, input_signature=[tf.TensorSpec([None, *element.shape[1:]], element.dtype)],
                                 autograph=False)

    def __call__(self, batches: tf.data.Dataset) -> np.ndarray:
        """The outputs for every batch, in order; a batch may be `x` or `(x, labels)`."""
        outputs = [self._call(x[0] if isinstance(x, tuple) else x).numpy() for x in batches]
        return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)


def _inference(model: keras.Model) -> Callable:
    return lambda x: model(x, training=False)


class _Images:
    """The decoded images (a uint8 array, in memory or memory-mapped) fed to functions by row indices,
    batch by batch, with the cast and the preprocessing on the function's own graph. For passes without
    augmentation (features, validation) this replaces a tf.data pipeline, whose threads, competing
    with the forward pass for two cores, slowed it by about a third."""

    def __init__(self, pixels: np.ndarray, preprocess: Callable, batch_size: int):
        self.pixels, self.preprocess, self.batch_size = pixels, preprocess, batch_size

    def mapper(self, fn: Callable) -> Callable[[np.ndarray], np.ndarray]:
        """`run(indices)`: `fn` of the preprocessed images at `indices`, in order, traced once for any indices."""
        preprocess, pixels = self.preprocess, self.pixels
        traced = tf.function(lambda images: fn(preprocess(tf.cast(images, tf.float32))),
                             input_signature=[tf.TensorSpec([None, *pixels.shape[1:]], tf.uint8)], autograph=False)

        def call(batch):
            order = np.argsort(batch)  # read the array in file order, then restore the batch's order
            images = np.empty((len(batch), *pixels.shape[1:]), np.uint8)
            images[order] = pixels[batch[order]]
            return traced(images)

        def run(indices: np.ndarray) -> np.ndarray:
            indices = np.asarray(indices, dtype=np.int64)
            outputs = [call(indices[start:start + self.batch_size]).numpy()
                       for start in range(0, len(indices), self.batch_size)]
            return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)

        return run


def _chain_start(backbone: keras.Model) -> int:
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


class _Validation:
    """The held-out split's class probabilities, and the metrics Keras' `fit` would log from them.

    The layers before `cut` stay frozen (and in inference mode) through the phases this serves, so
    their output on the validation images never changes: it is computed once, on the first run, and
    each epoch's validation runs only the layers from `cut` on and the head, one traced graph for
    every epoch of both phases. Without a usable cut, the whole model runs each time.
    The latest probabilities double as the evaluation of the phase that just ended, so evaluating
    costs no pass of its own.
    """

    def __init__(self, model: keras.Model, backbone: keras.Model, images: _Images | None, indices: np.ndarray,
                 labels: np.ndarray, *, cut: int | None = None, features: np.ndarray | None = None):
        self.model, self.backbone, self.images, self.indices, self.cut = model, backbone, images, indices, cut
        self.labels = np.asarray(labels, dtype=np.int64)
        self.latest: np.ndarray | None = None
        self._run: Callable[[], np.ndarray] | None = None
        if features is not None:  # the head alone, on features already computed
            self._run = self._on_arrays(_inference(model), features)

    @classmethod
    def of_features(cls, head: keras.Model, features: np.ndarray, labels: np.ndarray) -> "_Validation":
        """The head alone on features already computed."""
        return cls(head, head, None, np.arange(len(labels)), labels, features=features)

    @staticmethod
    def _on_arrays(fn: Callable, arrays: np.ndarray) -> Callable[[], np.ndarray]:
        forward = _Forward(fn, tf.TensorSpec(arrays.shape, arrays.dtype))
        batches = without_autotune(tf.data.Dataset.from_tensor_slices(arrays).batch(_FEATURE_BATCH))
        return lambda: forward(batches)

    def _prepare(self) -> None:
        if self.cut is None:
            run = self.images.mapper(_inference(self.model))
            self._run = lambda: run(self.indices)
            return
        layers = self.backbone.layers
        prefix = self.backbone if self.cut == len(layers) else keras.Model(self.backbone.input, layers[self.cut].input)
        activations = self.images.mapper(_inference(prefix))(self.indices)
        suffix = [*layers[self.cut:], *self.model.layers[2:]]  # the classifier: input, backbone, head

        def rest(x):
            for layer in suffix:
                x = layer(x, training=False)
            return x

        self._run = self._on_arrays(rest, activations)

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


def _validation_cut(backbone: keras.Model, cut: int, *, count: int, budget_bytes: int) -> int | None:
    """`cut` when the backbone can be cut there and the validation images' activations at the cut
    fit in `budget_bytes`; otherwise None (the whole model runs at every validation)."""
    layers = backbone.layers
    if not _chain_start(backbone) <= cut <= len(layers):
        return None
    shape = backbone.output.shape if cut == len(layers) else layers[cut].input.shape
    nbytes = count * int(np.prod(shape[1:])) * tf.as_dtype(backbone.compute_dtype).size
    return cut if nbytes <= budget_bytes else None


class _PhaseCallback(keras.callbacks.Callback):
    """Reports batches and epochs, stops at the next batch when cancelled, validates and checkpoints each epoch."""

    def __init__(self, *, phase: str, epochs: int, batches: int, history: list[dict],
                 report: ProgressFn, should_cancel: CancelFn, on_epoch_saved: Callable[[int], None],
                 validation: _Validation):
        super().__init__()
        self.phase, self.epochs, self.batches = phase, epochs, batches
        self.history, self.report, self.should_cancel = history, report, should_cancel
        self.on_epoch_saved, self.validation = on_epoch_saved, validation
        self.train_seconds = 0.0
        self.epochs_run = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = self.batch_clock = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.batch_clock = time.perf_counter()
        if self.should_cancel():
            raise JobCancelled("cancelled during training")
        self.report(ProgressEvent(self.phase, epoch=self._epoch + 1, epochs=self.epochs,
                                  batch=batch + 1, batches=self.batches))

    def on_epoch_end(self, epoch, logs=None):
        logs = {**(logs or {}), **self.validation.run()}
        self.train_seconds += self.batch_clock - self.epoch_started
        self.epochs_run += 1
        row = {
            "phase": self.phase,
            "epoch": epoch + 1,
            **{key: float(logs[key]) for key in ("loss", "accuracy", "val_loss", "val_accuracy") if key in logs},
            "seconds": time.perf_counter() - self.epoch_started,
        }
        self.history.append(row)
        self.on_epoch_saved(epoch + 1)
        self.report(ProgressEvent(self.phase, epoch=epoch + 1, epochs=self.epochs, batch=self.batches,
                                  batches=self.batches, metrics=row, history=list(self.history)))

    @property
    def _epoch(self) -> int:
        return sum(1 for row in self.history if row["phase"] == self.phase)


def _no_progress(event: ProgressEvent) -> None:
    return None


def _never() -> bool:
    return False


def _jit_compile() -> bool | str:
    """XLA only where there is a GPU: on CPU it made MobileNet's train step 3-8x slower (BENCHMARKS.md)."""
    return "auto" if tf.config.list_physical_devices("GPU") else False


def train(
    spec: TrainingSpec,
    *,
    dataset_dir: str | Path,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    checkpoint_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    max_pixels: int = 50_000_000,
    device_plan: DevicePlan | None = None,
) -> TrainResult:
    """Run the recipe on `dataset_dir` and return the trained model with its evaluations and timings.

    With `checkpoint_dir`, the state after every epoch is saved there and a later call with the
    same folder resumes from it. `should_cancel` is asked after every batch; it may also raise.
    """
    report = progress or _no_progress
    cancelled = should_cancel or _never
    checkpointer = Checkpointer(checkpoint_dir) if checkpoint_dir else None
    started = time.perf_counter()
    report(ProgressEvent("loading"))
    keras.utils.set_random_seed(spec.seed)  # the head's initial weights, dropout and augmentation too, not only the split

    scan = scan_dataset(dataset_dir, probe=False, max_pixels=max_pixels)
    decoded = decode_dataset(scan, size=spec.image_size, max_pixels=max_pixels,
                             cache_dir=Path(cache_dir) if cache_dir else None)
    classes = decoded.scan.classes
    train_idx, val_idx = stratified_split(decoded.labels, validation_split=spec.validation_split, seed=spec.seed)
    train_labels, val_labels = decoded.labels[train_idx], decoded.labels[val_idx]
    preprocess = get_backbone(spec.backbone).preprocess()

    plan = device_plan or plan_devices(detect_gpus())
    apply_precision(plan)
    strategy = make_strategy(plan)
    batch_size = spec.batch_size * plan.replicas
    jit_compile = _jit_compile()

    decoded_bytes = int(decoded.pixels.nbytes)
    # One copy of the images: the decoded array (or memory map), gathered batch by batch with numpy.
    # As a tensor, TensorFlow's copy of it peaked at three times its size while converting.
    pixels = decoded.pixels

    augment = RandomAffine(spec.augmentation, then=preprocess) if spec.augmentation is not None else None

    def train_stream(epochs: int) -> tf.data.Dataset:
        return make_dataset(pixels, decoded.labels, subset=train_idx, batch_size=batch_size, preprocess=preprocess,
                            augmentation=augment, shuffle_seed=spec.seed, epochs=epochs)

    images = _Images(pixels, preprocess, batch_size)
    batches = int(np.ceil(len(train_idx) / batch_size))
    load_s = time.perf_counter() - started

    resumed = checkpointer.load() if checkpointer else None
    state = resumed[0] if resumed else {"phase": "warmup", "epoch": 0, "history": [], "warmup_metrics": None}
    history: list[dict] = state["history"]
    timings = {"load_s": load_s, "warmup_s": 0.0, "finetune_s": 0.0, "images_per_s": {"warmup": None, "finetune": None}}
    use_feature_cache = spec.augmentation is None and plan.replicas == 1

    with strategy.scope():
        if resumed and state["phase"] == "finetune":
            model = resumed[1]
            backbone = model.layers[1]
        else:
            backbone = build_backbone(spec)
            head = resumed[1] if resumed and state.get("trainee") == "head" else build_head(
                tuple(backbone.output.shape[1:]), head=spec.head, num_classes=len(classes))
            model = resumed[1] if resumed and state.get("trainee") == "model" else assemble(
                backbone, head, image_size=spec.image_size)
            if resumed and state.get("trainee") == "model":
                backbone = model.layers[1]
    # Validation for the whole model, shared by both phases: cut where the finetune unfreezes (or after
    # the backbone), the layers before the cut are frozen throughout.
    cut = None
    if plan.replicas == 1:
        cut = _validation_cut(backbone, spec.unfreeze_index if spec.finetune is not None else len(backbone.layers),
                              count=len(val_idx), budget_bytes=decoded_bytes)
    validation = _Validation(model, backbone, images, val_idx, val_labels, cut=cut)

    def run_phase(name: str, phase: PhaseSpec, trainee: keras.Model, fit_train: Callable[[int], tf.data.Dataset],
                  phase_validation: _Validation, *, initial_epoch: int, trainee_kind: str,
                  extra_train_s: float = 0.0) -> None:
        def save(epoch: int) -> None:
            if checkpointer:
                checkpointer.save(trainee, {"phase": name, "epoch": epoch, "history": history,
                                            "warmup_metrics": state["warmup_metrics"], "trainee": trainee_kind})

        callback = _PhaseCallback(phase=name, epochs=phase.epochs, batches=batches, history=history,
                                  report=report, should_cancel=cancelled, on_epoch_saved=save,
                                  validation=phase_validation)
        phase_started = time.perf_counter()
        if phase.epochs > initial_epoch:
            phase_validation.latest = None  # the weights are about to change
            report(ProgressEvent(name, epoch=initial_epoch, epochs=phase.epochs, batches=batches))
            # One stream for the phase's epochs (`batches` steps each): the input pipeline keeps running
            # from one epoch into the next, preparing its first batches while this one validates.
            trainee.fit(fit_train(phase.epochs - initial_epoch), epochs=phase.epochs, initial_epoch=initial_epoch,
                        steps_per_epoch=batches, callbacks=[callback], verbose=0, shuffle=False)
        timings[f"{name}_s"] = time.perf_counter() - phase_started + extra_train_s
        train_s = callback.train_seconds + extra_train_s
        if callback.epochs_run and train_s > 0:
            timings["images_per_s"][name] = len(train_idx) * callback.epochs_run / train_s

    if state["phase"] == "warmup":
        if use_feature_cache and state.get("trainee") != "model":
            # The frozen backbone's features, once per image; the head then trains on them alone.
            features_started = time.perf_counter()
            report(ProgressEvent("warmup", epochs=spec.warmup.epochs, batches=batches))
            with strategy.scope():
                extract = images.mapper(_inference(backbone))
                train_features, val_features = extract(train_idx), extract(val_idx)
            feature_s = time.perf_counter() - features_started
            if cancelled():
                raise JobCancelled("cancelled during training")

            def feature_train(epochs: int) -> tf.data.Dataset:
                return without_autotune(tf.data.Dataset.from_tensor_slices((train_features, train_labels)).shuffle(
                    len(train_idx), seed=spec.seed, reshuffle_each_iteration=True).batch(batch_size).repeat(epochs))

            head_validation = _Validation.of_features(head, val_features, val_labels)
            with strategy.scope():
                if not (resumed and state.get("trainee") == "head"):
                    compile_for(head, spec.warmup, jit_compile=jit_compile)
            run_phase("warmup", spec.warmup, head, feature_train, head_validation,
                      initial_epoch=state["epoch"], trainee_kind="head", extra_train_s=feature_s)
            warmup_validation = head_validation
        else:
            with strategy.scope():
                if not resumed:
                    compile_for(model, spec.warmup, jit_compile=jit_compile)
            run_phase("warmup", spec.warmup, model, train_stream, validation,
                      initial_epoch=state["epoch"], trainee_kind="model")
            warmup_validation = validation
        report(ProgressEvent("evaluating"))
        state["warmup_metrics"] = evaluate_predictions(val_labels, warmup_validation.predicted_labels(), classes)

    if spec.finetune is not None:
        with strategy.scope():
            if state["phase"] != "finetune":
                unfreeze_from(backbone, spec.unfreeze_index)
                compile_for(model, spec.finetune, jit_compile=jit_compile)
        run_phase("finetune", spec.finetune, model, train_stream, validation,
                  initial_epoch=state["epoch"] if state["phase"] == "finetune" else 0, trainee_kind="model")

    if spec.finetune is None and state["warmup_metrics"] is not None:
        metrics = state["warmup_metrics"]
    else:
        report(ProgressEvent("evaluating"))
        metrics = evaluate_predictions(val_labels, validation.predicted_labels(), classes)
    return TrainResult(
        model=model,
        spec=spec,
        classes=classes,
        metrics=metrics,
        warmup_metrics=state["warmup_metrics"],
        history=history,
        timings=timings,
        skipped=decoded.scan.skipped,
        num_train=len(train_idx),
        num_validation=len(val_idx),
    )
