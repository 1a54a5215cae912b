"""The two-phase recipe of the seed, top to bottom: prepare the data, build the classifier (or resume
it from a checkpoint), train the new head on the frozen backbone (warmup), unfreeze the last block and
fine-tune (finetune), evaluate on the held-out split. `train` is the whole recipe; `_Run` holds what
its steps share (the data, the device strategy, the history, the checkpoint state)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from finetune.errors import JobCancelled
from finetune.ml.backbones import get_backbone
from finetune.ml.checkpoint import HEAD, MODEL, Checkpointer, Resumed, TrainingState
from finetune.ml.curves import evaluation_curves
from finetune.ml.devices import DevicePlan, apply_precision, detect_gpus, make_strategy, plan_devices
from finetune.ml.evaluation import evaluate_predictions
from finetune.ml.network import assemble, build_backbone, build_head, compile_for, unfreeze_from
from finetune.ml.pipeline import RandomAffine, decode_dataset, make_dataset
from finetune.ml.scan import TEST, VALIDATION, Skipped, scan_dataset, split_dataset
from finetune.ml.spec import PhaseSpec, TrainingSpec
from finetune.ml.thresholds import pick_thresholds
from finetune.ml.training.callbacks import (
    CancelFn,
    EpochValidation,
    PhaseCallback,
    ProgressEvent,
    ProgressFn,
    never,
    no_progress,
)
from finetune.ml.training.control import PhaseControl, class_weights
from finetune.ml.training.feeding import ImageFeeder, feature_stream, inference
from finetune.ml.training.validation import Validation, validation_cut
from finetune.states import Phase

__all__ = ["ProgressEvent", "TrainResult", "WarmStart", "train"]


@dataclass
class WarmStart:
    """A trained classifier (input -> backbone -> head) to start from instead of ImageNet's weights, and
    its classes in its output order."""

    model: keras.Model
    classes: list[str]
    model_id: str | None = None


@dataclass
class HeldOut:
    """The held-out split's files (relative to the dataset folder), true labels and the final model's
    probabilities: what the curves, thresholds and the misclassified-images view are computed from."""

    files: list[str]
    labels: np.ndarray
    probabilities: np.ndarray


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
    held_out: HeldOut | None = None
    curves: dict | None = None  # finetune.ml.curves.evaluation_curves of `held_out`
    thresholds: dict | None = None  # {target_precision, per_class} when the spec asks for thresholds
    validation_metrics: dict | None = None  # the final model on the validation split (= metrics without a test split)
    num_test: int = 0
    metrics_split: str = VALIDATION  # where `metrics`, `held_out` and `curves` come from: test when there is one


@dataclass
class PreparedData:
    """The decoded images (one uint8 array, in memory or memory-mapped) with their labels and split."""

    classes: list[str]
    pixels: np.ndarray
    labels: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    skipped: list[Skipped]
    files: list[str] = field(default_factory=list)
    test_idx: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))  # untouched until the end

    @property
    def train_labels(self) -> np.ndarray:
        return self.labels[self.train_idx]

    @property
    def val_labels(self) -> np.ndarray:
        return self.labels[self.val_idx]

    @property
    def test_labels(self) -> np.ndarray:
        return self.labels[self.test_idx]


@dataclass
class Networks:
    """The classifier (input -> backbone -> head) and its two parts, trained in place."""

    model: keras.Model
    backbone: keras.Model
    head: keras.Model | None  # None when resumed in the finetune (only the whole model is needed)


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
    warm_start: WarmStart | None = None,
) -> TrainResult:
    """Run the recipe on `dataset_dir` and return the trained model with its evaluations and timings.

    With `checkpoint_dir`, the state after every epoch is saved there and a later call with the
    same folder resumes from it. `should_cancel` is asked after every batch; it may also raise.
    With `warm_start`, a new run starts from that model's weights (see `_Run.warm_started`).
    """
    started = time.perf_counter()
    report = progress or no_progress
    report(ProgressEvent(Phase.LOADING))
    keras.utils.set_random_seed(
        spec.seed
    )  # the head's initial weights, dropout and augmentation too, not only the split
    plan = device_plan or plan_devices(detect_gpus())
    apply_precision(plan)
    data = prepare_data(spec, dataset_dir, cache_dir=cache_dir, max_pixels=max_pixels)
    checkpointer = Checkpointer(checkpoint_dir) if checkpoint_dir else None
    resumed = checkpointer.load() if checkpointer else None
    run = _Run(
        spec,
        data,
        plan,
        report=report,
        cancelled=should_cancel or never,
        checkpointer=checkpointer,
        state=resumed.state if resumed else TrainingState(),
        best_weights=resumed.best_weights if resumed else None,
    )
    run.timings["load_s"] = time.perf_counter() - started

    networks = run.build_or_resume(resumed, warm_start)
    if run.state.phase == Phase.WARMUP:
        run.warmup(networks)
    if spec.finetune is not None:
        run.finetune(networks)
    return run.result(networks)


def prepare_data(
    spec: TrainingSpec, dataset_dir: str | Path, *, cache_dir: str | Path | None, max_pixels: int
) -> PreparedData:
    """Scan, decode at the spec's size (memory-mapped under `cache_dir` when large) and split: the
    dataset's given splits, else stratified (with a test split when the spec has `test_split`)."""
    scan = scan_dataset(dataset_dir, probe=False, max_pixels=max_pixels)
    decoded = decode_dataset(
        scan, size=spec.image_size, max_pixels=max_pixels, cache_dir=Path(cache_dir) if cache_dir else None
    )
    splits = split_dataset(
        decoded.scan, decoded.labels, validation_split=spec.validation_split, test_split=spec.test_split, seed=spec.seed
    )
    return PreparedData(
        decoded.scan.classes,
        decoded.pixels,
        decoded.labels,
        splits.train,
        splits.validation,
        decoded.scan.skipped,
        files=list(decoded.scan.files),
        test_idx=splits.test,
    )


def _jit_compile() -> bool | str:
    """XLA only where there is a GPU: on CPU it made MobileNet's train step 3-8x slower (BENCHMARKS.md)."""
    return "auto" if tf.config.list_physical_devices("GPU") else False


class _Run:
    """One call of `train`: the steps of the recipe over shared data, strategy, history and state."""

    def __init__(
        self,
        spec: TrainingSpec,
        data: PreparedData,
        plan: DevicePlan,
        *,
        report: ProgressFn,
        cancelled: CancelFn,
        checkpointer: Checkpointer | None,
        state: TrainingState,
        best_weights: list[np.ndarray] | None = None,
    ):
        self.spec, self.data, self.plan, self.state = spec, data, plan, state
        self.resumed_best_weights = best_weights
        self.class_weight = class_weights(spec, data.classes, data.train_labels)
        self.report, self.cancelled, self.checkpointer = report, cancelled, checkpointer
        self.strategy = make_strategy(plan)
        self.batch_size = spec.batch_size * plan.replicas
        self.jit_compile = _jit_compile()
        self.preprocess = get_backbone(spec.backbone).preprocess(spec.input_scaling)
        self.augment = RandomAffine(spec.augmentation, then=self.preprocess) if spec.augmentation is not None else None
        # One copy of the images: the decoded array (or memory map), gathered batch by batch with numpy.
        # As a tensor, TensorFlow's copy of it peaked at three times its size while converting.
        self.images = ImageFeeder(data.pixels, self.preprocess, self.batch_size)
        self.batches = int(np.ceil(len(data.train_idx) / self.batch_size))
        self.timings = {
            "load_s": 0.0,
            "warmup_s": 0.0,
            "finetune_s": 0.0,
            "images_per_s": {"warmup": None, "finetune": None},
        }
        self.validation: Validation | None = None
        self.final_validation: Validation | None = None  # the one whose latest probabilities are the result's

    # --- build -----------------------------------------------------------------------------

    def build_or_resume(self, resumed: Resumed | None, warm_start: WarmStart | None = None) -> Networks:
        """A new classifier from the spec (or from `warm_start`'s weights), or the one (or the head) a
        checkpoint saved; and the whole model's validation, shared by both phases."""
        spec, trainee = self.spec, resumed.trainee if resumed else None
        with self.strategy.scope():
            if trainee is None and warm_start is not None:
                networks = self.warm_started(warm_start)
            elif trainee is not None and (self.state.trainee == MODEL or self.state.phase == Phase.FINETUNE):
                networks = Networks(trainee, trainee.layers[1], None)
            else:
                backbone = build_backbone(spec)
                head = (
                    trainee
                    if trainee is not None
                    else build_head(
                        tuple(backbone.output.shape[1:]), head=spec.head, num_classes=len(self.data.classes)
                    )
                )
                networks = Networks(assemble(backbone, head, image_size=spec.image_size), backbone, head)
        self.validation = self._whole_model_validation(networks.backbone, networks.model)
        return networks

    def warm_started(self, warm_start: WarmStart) -> Networks:
        """The spec's classifier with `warm_start`'s weights: the backbone's and the hidden Dense's as
        they are; of the output layer, the kernel columns and bias entries of the classes both share
        (new classes start as Keras initializes them; removed ones are dropped)."""
        spec, classes = self.spec, self.data.classes
        backbone = build_backbone(spec.model_copy(update={"weights": "none"}))  # all its weights are copied
        head = build_head(tuple(backbone.output.shape[1:]), head=spec.head, num_classes=len(classes))
        old_backbone, old_head = warm_start.model.layers[1], warm_start.model.layers[2]
        backbone.set_weights(old_backbone.get_weights())
        head.get_layer("fc").set_weights(old_head.get_layer("fc").get_weights())
        kernel, bias = (np.array(weights) for weights in head.get_layer("predictions").get_weights())
        old_kernel, old_bias = old_head.get_layer("predictions").get_weights()
        for name in set(classes) & set(warm_start.classes):
            new, old = classes.index(name), warm_start.classes.index(name)
            kernel[:, new], bias[new] = old_kernel[:, old], old_bias[old]
        head.get_layer("predictions").set_weights([kernel, bias])
        return Networks(assemble(backbone, head, image_size=spec.image_size), backbone, head)

    def _whole_model_validation(self, backbone: keras.Model, model: keras.Model) -> Validation:
        """Cut where the finetune unfreezes (or after the backbone): the layers before the cut stay
        frozen throughout, so their activations on the held-out images are computed once."""
        data, cut = self.data, None
        if self.plan.replicas == 1:
            cut_at = self.spec.unfreeze_index if self.spec.finetune is not None else len(backbone.layers)
            cut = validation_cut(backbone, cut_at, count=len(data.val_idx), budget_bytes=int(data.pixels.nbytes))
        return Validation(model, backbone, self.images, data.val_idx, data.val_labels, cut=cut)

    # --- phase 1: the head on the frozen backbone -------------------------------------------

    def warmup(self, networks: Networks) -> None:
        """Train the new head with the backbone frozen; then evaluate it (the `warmup_metrics`).
        Without augmentation (and on one device) the backbone's features are computed once per image
        and the head trains on them alone."""
        use_feature_cache = self.spec.augmentation is None and self.plan.replicas == 1
        if use_feature_cache and self.state.trainee != MODEL:
            validation = self._warmup_on_features(networks)
        else:
            with self.strategy.scope():
                if self.state.trainee is None:
                    compile_for(networks.model, self.spec.warmup, jit_compile=self.jit_compile)
            self._fit(
                Phase.WARMUP, self.spec.warmup, networks.model, self._image_stream, self.validation, trainee_kind=MODEL
            )
            validation = self.validation
        self.report(ProgressEvent(Phase.EVALUATING))
        self.final_validation = validation
        self.state.warmup_metrics = evaluate_predictions(
            self.data.val_labels, validation.predicted_labels(), self.data.classes
        )

    def _warmup_on_features(self, networks: Networks) -> Validation:
        data, head, started = self.data, networks.head, time.perf_counter()
        self.report(ProgressEvent(Phase.WARMUP, epochs=self.spec.warmup.epochs, batches=self.batches))
        with self.strategy.scope():
            extract = self.images.mapper(inference(networks.backbone))
            train_features, val_features = extract(data.train_idx), extract(data.val_idx)
        feature_s = time.perf_counter() - started
        if self.cancelled():
            raise JobCancelled("cancelled during training")

        def stream(epochs: int) -> tf.data.Dataset:
            return feature_stream(
                train_features, data.train_labels, batch_size=self.batch_size, seed=self.spec.seed, epochs=epochs
            )

        validation = Validation.of_features(head, val_features, data.val_labels)
        with self.strategy.scope():
            if self.state.trainee != HEAD:
                compile_for(head, self.spec.warmup, jit_compile=self.jit_compile)
        self._fit(Phase.WARMUP, self.spec.warmup, head, stream, validation, trainee_kind=HEAD, extra_train_s=feature_s)
        return validation

    # --- phase 2: the last block unfrozen ---------------------------------------------------

    def finetune(self, networks: Networks) -> None:
        """Unfreeze from `unfreeze_from`, recompile with the finetune's optimizer and train the whole model."""
        resuming = self.state.phase == Phase.FINETUNE
        with self.strategy.scope():
            if not resuming:
                unfreeze_from(networks.backbone, self.spec.unfreeze_index, batchnorm=self.spec.finetune.batchnorm)
                compile_for(networks.model, self.spec.finetune, jit_compile=self.jit_compile)
        self._fit(
            Phase.FINETUNE,
            self.spec.finetune,
            networks.model,
            self._image_stream,
            self.validation,
            trainee_kind=MODEL,
            initial_epoch=self.state.epoch if resuming else 0,
        )

    # --- evaluate ---------------------------------------------------------------------------

    def result(self, networks: Networks) -> TrainResult:
        """The final metrics: on the test split when there is one (touched only here), else on the
        validation split (the warmup's when there is no finetune). Thresholds are picked on validation."""
        data, state = self.data, self.state
        if self.spec.finetune is None and state.warmup_metrics is not None and self.final_validation is not None:
            validation_metrics = state.warmup_metrics
        else:
            self.report(ProgressEvent(Phase.EVALUATING))
            self.final_validation = self.validation
            validation_metrics = evaluate_predictions(data.val_labels, self.validation.predicted_labels(), data.classes)
        validation_held_out = self._held_out()
        test = self._test(networks)
        held_out = test or validation_held_out
        metrics = (
            evaluate_predictions(test.labels, test.probabilities.argmax(axis=-1), data.classes)
            if test
            else validation_metrics
        )
        return TrainResult(
            model=networks.model,
            spec=self.spec,
            classes=data.classes,
            metrics=metrics,
            warmup_metrics=state.warmup_metrics,
            history=state.history,
            timings=self.timings,
            skipped=data.skipped,
            num_train=len(data.train_idx),
            num_validation=len(data.val_idx),
            held_out=held_out,
            curves=evaluation_curves(held_out.labels, held_out.probabilities, data.classes) if held_out else None,
            thresholds=self._thresholds(validation_held_out),
            validation_metrics=validation_metrics,
            num_test=len(data.test_idx),
            metrics_split=TEST if test else VALIDATION,
        )

    def _test(self, networks: Networks) -> HeldOut | None:
        """The final model's probabilities on the test split (the whole model, one pass), or None."""
        data = self.data
        if not len(data.test_idx):
            return None
        test = Validation(networks.model, networks.backbone, self.images, data.test_idx, data.test_labels)
        test.run()
        files = [data.files[i] for i in data.test_idx] if data.files else []
        return HeldOut(files, data.test_labels, np.asarray(test.latest, dtype=np.float32))

    def _held_out(self) -> HeldOut | None:
        validation, data = self.final_validation, self.data
        if validation is None or not len(data.val_idx):
            return None
        validation.predicted_labels()  # runs the pass if the weights changed since the last one
        files = [data.files[i] for i in data.val_idx] if data.files else []
        return HeldOut(files, data.val_labels, np.asarray(validation.latest, dtype=np.float32))

    def _thresholds(self, held_out: HeldOut | None) -> dict | None:
        wanted = self.spec.thresholds
        if wanted is None or held_out is None:
            return None
        per_class = pick_thresholds(
            held_out.labels, held_out.probabilities, self.data.classes, target_precision=wanted.target_precision
        )
        return {"target_precision": wanted.target_precision, "per_class": per_class}

    # --- shared by both phases --------------------------------------------------------------

    def _image_stream(self, epochs: int) -> tf.data.Dataset:
        """The training images, augmented and preprocessed, reshuffled every epoch, for `epochs` epochs."""
        return make_dataset(
            self.data.pixels,
            self.data.labels,
            subset=self.data.train_idx,
            batch_size=self.batch_size,
            preprocess=self.preprocess,
            augmentation=self.augment,
            shuffle_seed=self.spec.seed,
            epochs=epochs,
        )

    def _fit(
        self,
        name: str,
        phase: PhaseSpec,
        trainee: keras.Model,
        stream,
        validation: Validation,
        *,
        trainee_kind: str,
        initial_epoch: int | None = None,
        extra_train_s: float = 0.0,
    ) -> None:
        """`fit` the phase's remaining epochs, validating, reporting and checkpointing each."""
        if initial_epoch is None:
            initial_epoch = self.state.epoch if self.state.phase == name else 0

        resuming = self.state.phase == name and initial_epoch > 0
        control = PhaseControl(
            phase,
            resumed=self.state.stopping if resuming else None,
            best_weights=self.resumed_best_weights if resuming else None,
        )
        best_file = (self.state.stopping or {}).get("best_file") if resuming else None

        def save(epoch: int) -> None:
            nonlocal best_file
            if not self.checkpointer:
                return
            improved = control.improved_at(epoch - 1)
            state = TrainingState(
                phase=name,
                epoch=epoch,
                history=self.state.history,
                warmup_metrics=self.state.warmup_metrics,
                trainee=trainee_kind,
                stopping={**control.state(trainee), **({"best_file": best_file} if best_file else {})},
            )
            self.checkpointer.save(trainee, state, best_weights=control.stopper.best_weights if improved else None)
            best_file = state.stopping.get("best_file")

        callback = PhaseCallback(
            phase=name,
            epochs=phase.epochs,
            batches=self.batches,
            history=self.state.history,
            report=self.report,
            should_cancel=self.cancelled,
            on_epoch_saved=save,
            validation=validation,
            control=control,
        )
        started = time.perf_counter()
        if resuming:
            control.resume_rate(trainee)
        if phase.epochs > initial_epoch and not control.stopped_when_resumed():
            validation.latest = None  # the weights are about to change
            self.report(ProgressEvent(name, epoch=initial_epoch, epochs=phase.epochs, batches=self.batches))
            # One stream for the phase's epochs (`batches` steps each): the input pipeline keeps running
            # from one epoch into the next, preparing its first batches while this one validates.
            trainee.fit(
                stream(phase.epochs - initial_epoch),
                epochs=phase.epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=self.batches,
                callbacks=[EpochValidation(validation), *control.callbacks, callback],
                verbose=0,
                shuffle=False,
                class_weight=self.class_weight,
            )
            if control.kept_epoch() not in (None, self.state.history[-1]["epoch"]):
                validation.latest = None  # EarlyStopping put the best epoch's weights back
        elif resuming:
            control.keep_best(trainee)
            validation.latest = None
        self.timings[f"{name}_s"] = time.perf_counter() - started + extra_train_s
        train_s = callback.train_seconds + extra_train_s
        if callback.epochs_run and train_s > 0:
            self.timings["images_per_s"][name] = len(self.data.train_idx) * callback.epochs_run / train_s
