"""Download the ImageNet no-top weights of some backbones into $KERAS_HOME/models.

    python scripts/fetch_weights.py vgg16 resnet50 mobilenet:0.25 mobilenet_v2:0.35:160

Each name is `backbone[:alpha[:size]]`; alpha (mobilenet, mobilenet_v2 only) and
size pick the weight file Keras will look for later (MobileNet files differ by both).
Names may be separated by spaces or commas. Run at image build time so workers
start without network access.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass

APPLICATIONS = {
    "vgg16": "VGG16",
    "vgg19": "VGG19",
    "resnet50": "ResNet50",
    "mobilenet": "MobileNet",
    "mobilenet_v2": "MobileNetV2",
    "efficientnet_b0": "EfficientNetB0",
}
WITH_ALPHA = {"mobilenet", "mobilenet_v2"}


@dataclass(frozen=True)
class WeightSpec:
    backbone: str
    alpha: float | None = None
    size: int | None = None

    def kwargs(self) -> dict:
        kwargs: dict = {"weights": "imagenet", "include_top": False}
        if self.alpha is not None:
            kwargs["alpha"] = self.alpha
        if self.size is not None:
            kwargs["input_shape"] = (self.size, self.size, 3)
        return kwargs


def parse_specs(text: str) -> list[WeightSpec]:
    specs = []
    for token in re.split(r"[\s,]+", text.strip()):
        if not token or token.lower() == "none":
            continue
        name, *rest = token.split(":")
        name = name.lower()
        if name not in APPLICATIONS:
            raise ValueError(f"unknown backbone {name!r}; choose among {sorted(APPLICATIONS)}")
        if len(rest) > 2:
            raise ValueError(f"{token!r}: expected backbone[:alpha[:size]]")
        alpha = float(rest[0]) if rest and rest[0] else None
        size = int(rest[1]) if len(rest) > 1 else None
        if alpha is not None and name not in WITH_ALPHA:
            raise ValueError(f"{token!r}: alpha applies to {sorted(WITH_ALPHA)} only")
        specs.append(WeightSpec(name, alpha, size))
    return specs


def fetch(spec: WeightSpec) -> None:
    import keras

    build = getattr(keras.applications, APPLICATIONS[spec.backbone])
    build(**spec.kwargs())
    keras.backend.clear_session()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backbones", nargs="*", help="none or empty: fetch nothing")
    args = parser.parse_args(argv)
    specs = parse_specs(" ".join(args.backbones))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for spec in specs:
        print(f"fetching {spec}", flush=True)
        fetch(spec)
    home = os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras"))
    models = os.path.join(home, "models")
    if os.path.isdir(models):
        for name in sorted(os.listdir(models)):
            print(f"  {os.path.join(models, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
