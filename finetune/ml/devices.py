"""Choice of distribution strategy and numeric precision from the visible accelerators.

`plan_devices` is pure (it takes the device list), so it is tested without a GPU;
`detect_gpus`, `make_strategy` and `apply_precision` are the thin TensorFlow side.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("default", "mirrored")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def usable_cores() -> int:
    """The cores this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class DevicePlan:
    strategy: str = "default"
    replicas: int = 1
    precision: str = "float32"
    # The devices a "mirrored" plan mirrors over; empty: MirroredStrategy's default, every GPU. Named
    # only where the devices are not GPUs (the tests mirror over two logical CPU devices).
    devices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")


def _capability(gpu: dict[str, Any]) -> tuple[int, int] | None:
    cc = gpu.get("compute_capability")
    if not cc:
        return None
    try:
        major, minor = cc
        return int(major), int(minor)
    except (TypeError, ValueError):
        return None


def precision_for(capabilities: Iterable[tuple[int, int] | None]) -> str:
    """The fastest safe mixed precision that every listed GPU supports.

    bfloat16 from Ampere (8.0), float16 from Volta (7.0, tensor cores), else float32.
    An unknown capability (e.g. a non-CUDA device) counts as float32.
    """
    caps = list(capabilities)
    if not caps or any(cc is None for cc in caps):
        return "float32"
    weakest = min(caps)
    if weakest >= (8, 0):
        return "mixed_bfloat16"
    if weakest >= (7, 0):
        return "mixed_float16"
    return "float32"


def plan_devices(gpus: list[dict[str, Any]], *, mixed_precision: bool = True) -> DevicePlan:
    """0 GPUs: plain float32. 1 GPU: no strategy, mixed precision. N GPUs: mirrored over N."""
    if not gpus:
        return DevicePlan()
    precision = precision_for(_capability(g) for g in gpus) if mixed_precision else "float32"
    if len(gpus) == 1:
        return DevicePlan(strategy="default", replicas=1, precision=precision)
    return DevicePlan(strategy="mirrored", replicas=len(gpus), precision=precision)


def detect_gpus() -> list[dict[str, Any]]:
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            details = dict(tf.config.experimental.get_device_details(device))
        except (ValueError, RuntimeError):
            details = {}
        gpus.append({"name": device.name, **details})
    return gpus


def make_strategy(plan: DevicePlan):
    import tensorflow as tf

    if plan.strategy == "mirrored":
        return tf.distribute.MirroredStrategy(list(plan.devices) or None)
    return tf.distribute.get_strategy()


def apply_precision(plan: DevicePlan) -> None:
    """Set Keras' global dtype policy. Call before the model is built."""
    import keras

    keras.mixed_precision.set_global_policy(plan.precision)
