"""The backbones a job can fine-tune: constructors from `keras.applications` and their facts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

LAYER_PROBE_SIZE = 64
INPUT_SCALINGS = ("backbone", "unit")


def unit_scale(images):
    """Pixels / 255, in [0, 1]: the seed's preprocessing, whatever the backbone."""
    return images * (1.0 / 255.0)


@dataclass(frozen=True)
class Backbone:
    name: str
    module: str
    constructor: str
    default_unfreeze_from: int | str
    min_image_size: int = 32
    alphas: tuple[float, ...] = ()
    # The recipe's defaults for this backbone (spec fields input_scaling and finetune.batchnorm when
    # left null): changed from the project's first choice ("backbone", "frozen") only where measured
    # at least as good as the seed's recipe at its full schedule (BENCHMARKS.md, issue 18).
    input_scaling: str = "backbone"
    batchnorm: str = "frozen"

    @property
    def has_alpha(self) -> bool:
        return bool(self.alphas)

    def application(self):
        import keras

        return getattr(keras.applications, self.constructor)

    def preprocess(self, input_scaling: str = "backbone") -> Callable:
        """float32 pixels in [0, 255] -> the network's input: the backbone's own `preprocess_input`
        ("backbone"), or pixels / 255 ("unit", what the seed fed every backbone). See `INPUT_SCALINGS`."""
        if input_scaling == "unit":
            return unit_scale
        if input_scaling != "backbone":
            raise ValueError(f"unknown input_scaling {input_scaling!r}; choose one of {', '.join(INPUT_SCALINGS)}")
        import keras

        return getattr(keras.applications, self.module).preprocess_input

    def build(self, *, image_size: int, weights: str, alpha: float | None = None):
        """The backbone without its top, for `image_size` square RGB input."""
        kwargs = {}
        if self.has_alpha:
            kwargs["alpha"] = alpha if alpha is not None else 1.0
        return self.application()(
            include_top=False,
            weights=None if weights == "none" else weights,
            input_shape=(image_size, image_size, 3),
            **kwargs,
        )


BACKBONES: dict[str, Backbone] = {
    backbone.name: backbone
    for backbone in (
        Backbone("vgg16", "vgg16", "VGG16", default_unfreeze_from=15),
        Backbone("vgg19", "vgg19", "VGG19", default_unfreeze_from="block5_conv1"),
        Backbone("resnet50", "resnet50", "ResNet50", default_unfreeze_from="conv5_block3_1_conv"),
        Backbone(
            "mobilenet",
            "mobilenet",
            "MobileNet",
            default_unfreeze_from="conv_dw_13",
            alphas=(0.25, 0.5, 0.75, 1.0),
            input_scaling="unit",
            batchnorm="trainable",
        ),
        Backbone(
            "mobilenet_v2",
            "mobilenet_v2",
            "MobileNetV2",
            default_unfreeze_from="block_16_expand",
            alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
        ),
        Backbone("efficientnet_b0", "efficientnet", "EfficientNetB0", default_unfreeze_from="block7a_expand_conv"),
    )
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


@cache
def describe_layers(name: str, alpha: float | None = None) -> tuple[dict, ...]:
    """Index, name, type and parameter count of each backbone layer (the seed's inspect_model.py).

    Layer names and order do not depend on the input size, so a small random-weight
    build answers for every size without touching the network.
    """
    backbone = get_backbone(name)
    model = backbone.build(image_size=LAYER_PROBE_SIZE, weights="none", alpha=alpha)
    rows = tuple(
        {
            "index": index,
            "name": layer.name,
            "type": type(layer).__name__,
            "params": int(layer.count_params()),
            "trainable_weights": len(layer.weights) > 0,
        }
        for index, layer in enumerate(model.layers)
    )
    del model
    return rows


def resolve_unfreeze_from(name: str, unfreeze_from: int | str | None, alpha: float | None = None) -> int:
    """The layer index to unfreeze from, given an index, a layer name or None (the default)."""
    backbone = get_backbone(name)
    target = backbone.default_unfreeze_from if unfreeze_from is None else unfreeze_from
    layers = describe_layers(name, alpha)
    if isinstance(target, int):
        if not 0 <= target < len(layers):
            raise ValueError(
                f"unfreeze_from {target} is outside {name}, whose layers are numbered 0..{len(layers) - 1}"
            )
        return target
    for layer in layers:
        if layer["name"] == target:
            return layer["index"]
    raise ValueError(f"unfreeze_from {target!r} names no layer of {name} (see `finetune layers {name}`)")
