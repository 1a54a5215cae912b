"""The job spec: what to train and how. Defaults are the seed's recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from finetune.ids import ALIAS_PATTERN
from finetune.ml.backbones import BACKBONES, get_backbone, resolve_unfreeze_from

BackboneName = Literal[tuple(BACKBONES)]  # type: ignore[valid-type]
OptimizerName = Literal["sgd", "rmsprop", "adam"]
BatchNormMode = Literal["frozen", "trainable"]
InputScaling = Literal["backbone", "unit"]
BATCHNORM_MODES: tuple[str, ...] = BatchNormMode.__args__


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HeadSpec(StrictModel):
    units: int = Field(256, ge=1, le=16384, description="units of the hidden Dense layer")
    dropout: float = Field(0.5, ge=0.0, lt=1.0)


class AugmentationSpec(StrictModel):
    """The seed's ImageDataGenerator parameters (shear in degrees, as Keras 2 read it)."""

    rotation: float = Field(30.0, ge=0.0, le=180.0, description="degrees, uniform in ±rotation")
    width_shift: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of the width")
    height_shift: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of the height")
    shear: float = Field(0.2, ge=0.0, le=45.0, description="degrees, uniform in ±shear")
    zoom: float = Field(0.2, ge=0.0, lt=1.0, description="scale uniform in [1-zoom, 1+zoom]")
    horizontal_flip: bool = True


BATCHNORM_DESCRIPTION = (
    "BatchNormalization layers from unfreeze_from in the finetune. 'frozen': inference mode, the "
    "ImageNet statistics, gamma and beta kept. 'trainable': they train in training mode (batch "
    "statistics; the moving statistics, gamma and beta adapt), as the seed's Keras 2 code had them. "
    "Layers before unfreeze_from stay frozen either way; no effect on vgg16/vgg19 (no BatchNorm). "
    "null: the backbone's default, 'trainable' for mobilenet, 'frozen' (unmeasured) for the others. "
    "Measured (issue 18, mobilenet 0.25, 25 + 100 epochs, real photos, one run each; BENCHMARKS.md): "
    "'frozen' swung in phase 2 "
    "(held-out accuracy down to 0.50 at one epoch, last-20 sd 0.10); 'trainable' was steady "
    "(sd 0.01) and ended higher: final 0.960 vs 0.867, last-20 mean 0.955 vs 0.924."
)
INPUT_SCALING_DESCRIPTION = (
    "How pixels reach the backbone, in training and serving alike. 'backbone': its own preprocess_input "
    "([-1, 1] for mobilenet*, caffe-style BGR mean subtraction for vgg*/resnet50, built into "
    "efficientnet_b0). 'unit': pixels / 255 in [0, 1], what the seed fed every backbone. null: the "
    "backbone's default, 'unit' for mobilenet, 'backbone' (unmeasured) for the others. Measured (issue "
    "18, mobilenet 0.25, 25 + 100 epochs, real photos, one run each; BENCHMARKS.md): with BatchNorm "
    "trainable, 'unit' ended at "
    "0.973 final / 0.962 last-20 mean vs 0.960 / 0.955 with 'backbone'; alone it gave 0.940 / 0.935 "
    "vs 0.867 / 0.924."
)


class EarlyStoppingSpec(StrictModel):
    """Stop the phase once `monitor` on the held-out split has not improved by more than `min_delta`
    for `patience` epochs (keras.callbacks.EarlyStopping); `restore_best` keeps the best epoch's weights."""

    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = Field(5, ge=1, le=10000)
    min_delta: float = Field(0.0, ge=0.0, le=1.0)
    restore_best: bool = True


ScheduleKind = Literal["constant", "cosine", "plateau"]


class ScheduleSpec(StrictModel):
    """The learning rate of each epoch of a phase, from the phase's `learning_rate`: first a linear ramp
    over `warmup_epochs` (epoch e of W at learning_rate * (e + 1) / W), then 'constant'; 'cosine' down to
    `min_lr` at the phase's last epoch; or 'plateau': times `factor` once `monitor` has not improved for
    `patience` epochs, never below `min_lr` (keras.callbacks.ReduceLROnPlateau)."""

    kind: ScheduleKind = "constant"
    warmup_epochs: int = Field(0, ge=0, le=10000)
    min_lr: float = Field(0.0, ge=0.0, le=10.0, description="cosine: the last epoch's; plateau: the floor")
    factor: float = Field(0.1, gt=0.0, lt=1.0, description="plateau: the reduction")
    patience: int = Field(2, ge=1, le=10000, description="plateau: epochs without improvement")
    monitor: Literal["val_loss", "val_accuracy"] = Field("val_loss", description="plateau")


class PhaseSpec(StrictModel):
    epochs: int = Field(ge=0, le=10000)
    optimizer: OptimizerName
    learning_rate: float = Field(gt=0.0, le=10.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD momentum (sgd only)")
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="stop the phase when the held-out split stops improving; null: all its epochs"
    )
    schedule: ScheduleSpec | None = Field(None, description="the learning rate per epoch; null: constant")

    @model_validator(mode="after")
    def _schedule_fits_phase(self) -> PhaseSpec:
        schedule = self.schedule
        if schedule is None:
            return self
        if schedule.warmup_epochs > self.epochs:
            raise ValueError(
                f"schedule.warmup_epochs {schedule.warmup_epochs} exceeds the phase's {self.epochs} epochs"
            )
        if schedule.min_lr >= self.learning_rate and schedule.kind != "constant":
            raise ValueError(f"schedule.min_lr {schedule.min_lr} must be below learning_rate {self.learning_rate}")
        return self


class WarmupSpec(PhaseSpec):
    epochs: int = Field(25, ge=0, le=10000)
    optimizer: OptimizerName = "rmsprop"
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)


class FinetunePhaseSpec(PhaseSpec):
    epochs: int = Field(100, ge=0, le=10000)
    optimizer: OptimizerName = "sgd"
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    unfreeze_from: int | str | None = Field(
        None, description="layer index or name; null means the backbone's last block"
    )
    batchnorm: BatchNormMode | None = Field(None, description=BATCHNORM_DESCRIPTION)


class ThresholdSpec(StrictModel):
    """Per-class probability thresholds picked on the held-out split when the job ends: for each class the
    lowest threshold whose held-out precision reaches `target_precision`. `/predict` then abstains
    (label null) when the top class's probability is below its class's threshold."""

    target_precision: float = Field(gt=0.0, le=1.0, description="e.g. 0.95")


class TrainingSpec(StrictModel):
    """Everything about a training run except where its data comes from.

    Checks that depend on the backbone are field validators, so a refusal names the field at fault.
    """

    backbone: BackboneName = "vgg16"
    weights: Literal["imagenet", "none"] = "imagenet"
    alpha: float | None = Field(None, gt=0.0, le=2.0, description="width multiplier: mobilenet, mobilenet_v2")
    image_size: int = Field(224, le=1024)
    batch_size: int = Field(32, ge=1, le=1024)
    validation_split: float = Field(
        0.25, gt=0.0, lt=1.0, description="a flat dataset's held-out fraction (given splits are taken as they are)"
    )
    test_split: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="a flat dataset's test fraction: a stratified train/validation/test split whose test images "
        "give the final metrics. null: no test split (the seed's). Not for a dataset with given splits.",
    )
    input_scaling: InputScaling | None = Field(None, description=INPUT_SCALING_DESCRIPTION)
    seed: int = 42
    head: HeadSpec = HeadSpec()
    augmentation: AugmentationSpec | None = AugmentationSpec()
    warmup: WarmupSpec = WarmupSpec()
    finetune: FinetunePhaseSpec | None = FinetunePhaseSpec()
    thresholds: ThresholdSpec | None = Field(
        default=None, description="pick per-class thresholds (abstaining predictions)"
    )
    class_weight: Literal["balanced"] | dict[str, float] | None = Field(
        default=None,
        description="weights of the training loss per class: 'balanced' (inverse frequency, scikit-learn's "
        "compute_class_weight) or {class name: weight > 0}, classes left out weigh 1; null: all alike",
    )

    @field_validator("alpha")
    @classmethod
    def _alpha_fits_backbone(cls, alpha: float | None, info: ValidationInfo) -> float | None:
        name = info.data.get("backbone")
        if alpha is None or name is None:
            return alpha
        backbone = get_backbone(name)
        if not backbone.has_alpha:
            raise ValueError(f"alpha applies to mobilenet and mobilenet_v2 only, not {name}")
        if info.data.get("weights") == "imagenet" and alpha not in backbone.alphas:
            raise ValueError(f"{name} has ImageNet weights for alpha in {list(backbone.alphas)}, not {alpha}")
        return alpha

    @field_validator("image_size")
    @classmethod
    def _image_size_fits_backbone(cls, image_size: int, info: ValidationInfo) -> int:
        name = info.data.get("backbone")
        minimum = get_backbone(name).min_image_size if name else 32
        if image_size < minimum:
            raise ValueError(f"image_size {image_size} is below {name or 'the backbone'}'s minimum of {minimum}")
        return image_size

    @field_validator("finetune")
    @classmethod
    def _unfreeze_from_names_a_layer(
        cls, finetune: FinetunePhaseSpec | None, info: ValidationInfo
    ) -> FinetunePhaseSpec | None:
        name = info.data.get("backbone")
        if finetune is None or name is None or "alpha" not in info.data:
            return finetune
        alpha = info.data["alpha"]
        if get_backbone(name).has_alpha and alpha is None:
            alpha = 1.0
        resolve_unfreeze_from(name, finetune.unfreeze_from, alpha)
        return finetune

    @field_validator("class_weight")
    @classmethod
    def _class_weights_positive(cls, weights: str | dict[str, float] | None) -> str | dict[str, float] | None:
        if isinstance(weights, dict):
            if not weights:
                raise ValueError("class_weight: name at least one class, or use null")
            bad = {name: weight for name, weight in weights.items() if not weight > 0}
            if bad:
                raise ValueError(f"class_weight: weights must be > 0, not {bad}")
        return weights

    @model_validator(mode="after")
    def _splits_leave_training_images(self) -> TrainingSpec:
        if self.test_split is not None and self.validation_split + self.test_split >= 1.0:
            raise ValueError(
                f"validation_split + test_split must be below 1 (got {self.validation_split} + {self.test_split})"
            )
        return self

    @model_validator(mode="after")
    def _backbone_recipe_defaults(self) -> TrainingSpec:
        """Null input_scaling and finetune.batchnorm become the backbone's measured defaults here, so a
        validated spec (and the manifest that records it) always names the concrete choice."""
        backbone = get_backbone(self.backbone)
        if self.input_scaling is None:
            self.input_scaling = backbone.input_scaling
        if self.finetune is not None and self.finetune.batchnorm is None:
            self.finetune.batchnorm = backbone.batchnorm
        return self

    @property
    def effective_alpha(self) -> float | None:
        if not get_backbone(self.backbone).has_alpha:
            return None
        return 1.0 if self.alpha is None else self.alpha

    @property
    def unfreeze_index(self) -> int | None:
        if self.finetune is None:
            return None
        return resolve_unfreeze_from(self.backbone, self.finetune.unfreeze_from, self.effective_alpha)

    @property
    def total_epochs(self) -> int:
        return self.warmup.epochs + (self.finetune.epochs if self.finetune else 0)


def unknown_weighted_classes(spec: TrainingSpec, classes: list[str]) -> list[str]:
    """The classes an explicit class_weight map names that the dataset does not have."""
    if not isinstance(spec.class_weight, dict):
        return []
    return sorted(set(spec.class_weight) - set(classes))


def warm_start_mismatches(spec: TrainingSpec, init: dict) -> list[str]:
    """What keeps the model whose manifest is `init` from starting `spec`: its weights fit only the same
    backbone, width, image size (the head's first Dense reads the flattened feature map) and head width."""
    init_spec = init.get("spec", {})
    theirs = {
        "backbone": init.get("backbone"),
        "alpha": init.get("alpha"),
        "image_size": init.get("image_size"),
        "head.units": init_spec.get("head", {}).get("units"),
    }
    ours = {
        "backbone": spec.backbone,
        "alpha": spec.effective_alpha,
        "image_size": spec.image_size,
        "head.units": spec.head.units,
    }
    return [
        f"{name} {ours[name]!r} (model {init.get('id')!r} has {theirs[name]!r})"
        for name in ours
        if ours[name] != theirs[name]
    ]


class PublishSpec(BaseModel):
    """Move an alias to the job's model when it succeeds with at least `min_accuracy` (on its test
    split when it has one, else on the held-out validation split); otherwise the alias stays put."""

    model_config = ConfigDict(extra="forbid")

    alias: str = Field(pattern=ALIAS_PATTERN, description="the alias to move, e.g. `production`")
    min_accuracy: float = Field(default=0.0, ge=0.0, le=1.0, description="the promotion gate")


WebhookEvent = Literal["final", "epoch"]
# What a job's spec names besides the recipe: where its data and its model go, whom to tell.
JOB_ONLY_FIELDS = frozenset({"dataset_id", "publish", "webhook_url", "webhook_events", "init_model_id"})


class JobSpec(TrainingSpec):
    dataset_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    publish: PublishSpec | None = Field(default=None, description="promote the model under an alias when it passes")
    init_model_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="start from this model's weights (id or alias) instead of ImageNet's; same backbone, alpha, "
        "image_size and head.units; the classifier rows of the classes both share are kept, new ones start fresh",
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="an http(s) URL POSTed a signed message (Standard Webhooks) when the job ends; its host "
        "must resolve to public addresses unless the server sets WEBHOOK_ALLOW_PRIVATE",
    )
    webhook_events: list[WebhookEvent] = Field(
        default=["final"],
        min_length=1,
        description="`final`: succeeded, failed or cancelled; `epoch`: also after every training epoch",
    )

    @field_validator("webhook_events")
    @classmethod
    def _events_once(cls, events: list[str]) -> list[str]:
        return sorted(set(events))

    @field_validator("dataset_id")
    @classmethod
    def _dataset_id_is_not_a_path(cls, dataset_id: str) -> str:
        if ".." in dataset_id:
            raise ValueError(f"dataset_id {dataset_id!r} must not contain '..'")
        return dataset_id

    def training_spec(self) -> TrainingSpec:
        return TrainingSpec.model_validate(self.model_dump(exclude=set(JOB_ONLY_FIELDS)))
