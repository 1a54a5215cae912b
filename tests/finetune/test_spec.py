"""The job spec: the seed's defaults, and refusals that name the field at fault."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from finetune.ml.backbones import BACKBONES, describe_layers, get_backbone, resolve_unfreeze_from
from finetune.ml.spec import AugmentationSpec, FinetunePhaseSpec, JobSpec, TrainingSpec


def refusal(**fields) -> list[dict]:
    """The errors of validating `fields`, which must be refused."""
    with pytest.raises(ValidationError) as caught:
        TrainingSpec.model_validate(fields)
    return caught.value.errors()


def only_error(**fields) -> dict:
    errors = refusal(**fields)
    assert len(errors) == 1, errors
    return errors[0]


# --- defaults ---------------------------------------------------------------------------


def test_defaults_are_the_seeds_recipe():
    spec = TrainingSpec()
    assert spec.backbone == "vgg16"
    assert spec.weights == "imagenet"
    assert spec.alpha is None
    assert spec.image_size == 224
    assert spec.batch_size == 32
    assert spec.validation_split == 0.25
    assert spec.seed == 42
    assert (spec.head.units, spec.head.dropout) == (256, 0.5)


def test_default_augmentation_is_the_seeds_image_data_generator():
    augmentation = TrainingSpec().augmentation
    assert augmentation == AugmentationSpec(
        rotation=30, width_shift=0.1, height_shift=0.1, shear=0.2, zoom=0.2, horizontal_flip=True
    )
    assert augmentation.model_dump() == {
        "rotation": 30.0,
        "width_shift": 0.1,
        "height_shift": 0.1,
        "shear": 0.2,
        "zoom": 0.2,
        "horizontal_flip": True,
    }


def test_default_phases_are_warmup_rmsprop_then_finetune_sgd():
    spec = TrainingSpec()
    assert (spec.warmup.epochs, spec.warmup.optimizer, spec.warmup.learning_rate) == (25, "rmsprop", 1e-3)
    assert (spec.finetune.epochs, spec.finetune.optimizer, spec.finetune.learning_rate) == (100, "sgd", 1e-3)
    assert spec.finetune.unfreeze_from is None
    assert spec.total_epochs == 125


def test_vgg16_default_unfreeze_index_is_block5():
    spec = TrainingSpec()
    assert spec.unfreeze_index == 15
    assert describe_layers("vgg16")[15]["name"] == "block5_conv1"


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbones_default_unfreeze_layer_resolves(name):
    spec = TrainingSpec(backbone=name, weights="none")
    index = spec.unfreeze_index
    layers = describe_layers(name, spec.effective_alpha)
    assert 0 < index < len(layers)
    default = get_backbone(name).default_unfreeze_from
    if isinstance(default, str):
        assert layers[index]["name"] == default


def test_unfreeze_from_accepts_a_layer_name_or_an_index():
    by_name = TrainingSpec(finetune={"unfreeze_from": "block4_conv1"})
    assert by_name.unfreeze_index == resolve_unfreeze_from("vgg16", "block4_conv1") == 11
    assert TrainingSpec(finetune={"unfreeze_from": 3}).unfreeze_index == 3


def test_mobilenet_effective_alpha_defaults_to_one_and_other_backbones_have_none():
    assert TrainingSpec(backbone="mobilenet").effective_alpha == 1.0
    assert TrainingSpec(backbone="mobilenet", alpha=0.25).effective_alpha == 0.25
    assert TrainingSpec(backbone="vgg16").effective_alpha is None


def test_augmentation_null_and_finetune_null_are_accepted():
    spec = TrainingSpec.model_validate({"augmentation": None, "finetune": None})
    assert spec.augmentation is None
    assert spec.finetune is None
    assert spec.unfreeze_index is None
    assert spec.total_epochs == 25


def test_spec_round_trips_through_its_dump():
    spec = TrainingSpec(backbone="mobilenet", alpha=0.5, finetune={"unfreeze_from": "conv_dw_12"})
    assert TrainingSpec.model_validate(spec.model_dump()) == spec


# --- refusals name their field --------------------------------------------------------


def test_unknown_backbone_is_refused_naming_backbone():
    error = only_error(backbone="alexnet")
    assert error["loc"] == ("backbone",)
    assert "vgg16" in error["msg"]


@pytest.mark.parametrize("index", [19, 1000, -1])
def test_unfreeze_index_outside_the_backbone_is_refused(index):
    error = only_error(finetune={"unfreeze_from": index})
    assert error["loc"][0] == "finetune"
    assert "unfreeze_from" in error["msg"]
    assert "0..18" in error["msg"]


def test_unfreeze_from_an_unknown_layer_name_is_refused():
    error = only_error(finetune={"unfreeze_from": "block9_conv1"})
    assert error["loc"][0] == "finetune"
    assert "'block9_conv1'" in error["msg"] and "names no layer" in error["msg"]


def test_unfreeze_from_is_checked_against_the_chosen_backbone():
    # block5_conv1 is a VGG layer name, not a MobileNet one.
    error = only_error(backbone="mobilenet", finetune={"unfreeze_from": "block5_conv1"})
    assert error["loc"][0] == "finetune"
    assert "mobilenet" in error["msg"]


@pytest.mark.parametrize("phase", ["warmup", "finetune"])
def test_negative_epochs_are_refused(phase):
    error = only_error(**{phase: {"epochs": -1}})
    assert error["loc"] == (phase, "epochs")


@pytest.mark.parametrize("rate", [0, -0.001])
@pytest.mark.parametrize("phase", ["warmup", "finetune"])
def test_learning_rate_must_be_positive(phase, rate):
    error = only_error(**{phase: {"learning_rate": rate}})
    assert error["loc"] == (phase, "learning_rate")
    assert "greater than 0" in error["msg"]


@pytest.mark.parametrize("split", [0, 0.0, 1, 1.0, -0.1, 1.5])
def test_validation_split_must_lie_strictly_between_0_and_1(split):
    error = only_error(validation_split=split)
    assert error["loc"] == ("validation_split",)


def test_validation_split_just_inside_the_bounds_is_accepted():
    assert TrainingSpec(validation_split=0.01).validation_split == 0.01
    assert TrainingSpec(validation_split=0.99).validation_split == 0.99


def test_image_size_below_the_backbones_minimum_is_refused():
    error = only_error(image_size=16)
    assert error["loc"] == ("image_size",)
    assert "16" in error["msg"] and "32" in error["msg"]
    assert TrainingSpec(image_size=32).image_size == 32


def test_alpha_on_vgg16_is_refused_naming_alpha():
    error = only_error(alpha=0.5)
    assert error["loc"] == ("alpha",)
    assert "mobilenet" in error["msg"]


def test_alpha_without_imagenet_weights_is_refused_with_imagenet():
    error = only_error(backbone="mobilenet", alpha=0.3)
    assert error["loc"] == ("alpha",)
    assert "0.25" in error["msg"] and "0.3" in error["msg"]


def test_alpha_without_imagenet_weights_is_allowed_with_random_init():
    spec = TrainingSpec(backbone="mobilenet", alpha=0.3, weights="none")
    assert spec.effective_alpha == 0.3
    assert describe_layers("mobilenet", 0.3)[spec.unfreeze_index]["name"] == "conv_dw_13"


@pytest.mark.parametrize("alpha", [0.35, 1.3, 1.4])
def test_mobilenet_v2_imagenet_alphas_are_accepted(alpha):
    assert TrainingSpec(backbone="mobilenet_v2", alpha=alpha).alpha == alpha


def test_unknown_top_level_field_is_refused():
    error = only_error(epochs=3)
    assert error["loc"] == ("epochs",)
    assert error["type"] == "extra_forbidden"


@pytest.mark.parametrize("section", ["head", "augmentation", "warmup", "finetune"])
def test_unknown_nested_field_is_refused(section):
    error = only_error(**{section: {"colour": "blue"}})
    assert error["loc"] == (section, "colour")
    assert error["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"batch_size": "many"}, ("batch_size",)),
        ({"batch_size": 1.5}, ("batch_size",)),
        ({"image_size": "big"}, ("image_size",)),
        ({"validation_split": "a quarter"}, ("validation_split",)),
        ({"head": {"units": "wide"}}, ("head", "units")),
        ({"augmentation": {"horizontal_flip": "sometimes"}}, ("augmentation", "horizontal_flip")),
        ({"warmup": {"optimizer": "lbfgs"}}, ("warmup", "optimizer")),
        ({"weights": "coco"}, ("weights",)),
        ({"head": 5}, ("head",)),
    ],
)
def test_wrong_types_are_refused_naming_the_field(fields, loc):
    errors = refusal(**fields)
    assert [error["loc"] for error in errors] == [loc]


def test_several_faults_are_all_reported():
    locs = {error["loc"] for error in refusal(batch_size=0, validation_split=1, head={"dropout": 1.0})}
    assert locs == {("batch_size",), ("validation_split",), ("head", "dropout")}


# --- JobSpec ---------------------------------------------------------------------------


def test_job_spec_requires_a_dataset_id():
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate({})
    assert [error["loc"] for error in caught.value.errors()] == [("dataset_id",)]


@pytest.mark.parametrize("dataset_id", ["../x", "a/b", "..", ".", ".hidden", "/etc", "a\\b", "", "x" * 129])
def test_job_spec_refuses_path_like_dataset_ids(dataset_id):
    with pytest.raises(ValidationError) as caught:
        JobSpec(dataset_id=dataset_id)
    assert [error["loc"] for error in caught.value.errors()] == [("dataset_id",)]


def test_job_spec_training_spec_drops_the_dataset_id():
    job = JobSpec(dataset_id="abc123", backbone="mobilenet", alpha=0.5, finetune=None)
    spec = job.training_spec()
    assert type(spec) is TrainingSpec
    assert spec.backbone == "mobilenet" and spec.alpha == 0.5 and spec.finetune is None
    assert "dataset_id" not in spec.model_dump()


# --- recipe options measured in issue 18 ------------------------------------------------------


@pytest.mark.parametrize(
    ("backbone", "scaling", "batchnorm"),
    [
        ("mobilenet", "unit", "trainable"),  # measured at least as good as the seed's recipe (issue 18)
        ("vgg16", "backbone", "frozen"),  # unmeasured: unchanged
        ("vgg19", "backbone", "frozen"),
        ("resnet50", "backbone", "frozen"),
        ("mobilenet_v2", "backbone", "frozen"),
        ("efficientnet_b0", "backbone", "frozen"),
    ],
)
def test_null_input_scaling_and_batchnorm_become_the_backbones_measured_defaults(backbone, scaling, batchnorm):
    spec = TrainingSpec.model_validate({"backbone": backbone})
    assert (spec.input_scaling, spec.finetune.batchnorm) == (scaling, batchnorm)
    assert (get_backbone(backbone).input_scaling, get_backbone(backbone).batchnorm) == (scaling, batchnorm)
    dumped = spec.model_dump()  # what the manifest records: the concrete choice, never null
    assert (dumped["input_scaling"], dumped["finetune"]["batchnorm"]) == (scaling, batchnorm)


def test_the_default_spec_is_unchanged_by_the_options():
    spec = TrainingSpec()
    assert (spec.backbone, spec.input_scaling, spec.finetune.batchnorm) == ("vgg16", "backbone", "frozen")


def test_explicit_choices_override_the_backbones_defaults():
    spec = TrainingSpec.model_validate(
        {"backbone": "mobilenet", "input_scaling": "backbone", "finetune": {"batchnorm": "frozen"}}
    )
    assert (spec.input_scaling, spec.finetune.batchnorm) == ("backbone", "frozen")


def test_without_a_finetune_only_the_input_scaling_is_filled_in():
    spec = TrainingSpec.model_validate({"backbone": "mobilenet", "finetune": None})
    assert spec.input_scaling == "unit" and spec.finetune is None


@pytest.mark.parametrize("scaling", ["backbone", "unit"])
@pytest.mark.parametrize("batchnorm", ["frozen", "trainable"])
def test_input_scaling_and_batchnorm_accept_their_values_and_round_trip(scaling, batchnorm):
    spec = TrainingSpec.model_validate({"input_scaling": scaling, "finetune": {"batchnorm": batchnorm}})
    assert (spec.input_scaling, spec.finetune.batchnorm) == (scaling, batchnorm)
    assert TrainingSpec.model_validate(spec.model_dump()) == spec


def test_unknown_input_scaling_is_refused_naming_the_field():
    assert only_error(input_scaling="imagenet")["loc"] == ("input_scaling",)


def test_unknown_batchnorm_mode_is_refused_naming_the_field():
    assert only_error(finetune={"batchnorm": "train"})["loc"] == ("finetune", "batchnorm")


def test_batchnorm_belongs_to_the_finetune_phase_not_the_warmup():
    assert only_error(warmup={"batchnorm": "trainable"})["loc"] == ("warmup", "batchnorm")


def test_the_options_describe_what_they_do():
    fields = TrainingSpec.model_fields
    assert "pixels / 255" in fields["input_scaling"].description
    assert "training mode" in FinetunePhaseSpec.model_fields["batchnorm"].description
