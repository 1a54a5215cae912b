"""Raw compute ceilings of the service's model on a fixed random batch (Keras 3).

No input pipeline, no augmentation, no HTTP: only what the chip can do with the
model. Every figure is the median over timed calls after warm-up calls (which
absorb tracing), so a noisy neighbour skews it less than a mean would.

The model is the project's own (``finetune.ml.network.build_model``): backbone without
top called with training=False, Flatten -> Dense(units, relu) -> Dropout -> Dense(softmax).

* forward: ``model(x, training=False)`` in a ``tf.function`` — the phase-1 bound
  when features are cached, and the serving bound (batch 1, 8, 32);
* phase-1 train step: every backbone layer frozen, RMSprop, ``train_on_batch``;
* phase-2 train step: backbone layers from ``unfreeze_from`` trainable, SGD,
  ``train_on_batch`` — the fine-tune bound;
* not a ceiling of the model but reported beside them: the project's input pipeline
  alone with the seed's augmentation (``augment_ips``), which shares the cores with
  the model while an augmented phase trains.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from bench.timing import percentile, time_calls
from finetune.ml.network import build_model, unfreeze_from
from finetune.ml.spec import TrainingSpec


@dataclass
class Ceilings:
    batch_size: int
    unfreeze_index: int
    forward_ips: float  # frozen forward pass at batch_size, images/s
    phase1_step_ips: float  # head-only train step at batch_size, images/s
    phase2_step_ips: float  # train step, layers from unfreeze_index trainable, images/s
    latency_b1_ms: float  # forward of one image, median ms
    latency_b1_p95_ms: float
    forward_b8_ips: float
    forward_b32_ips: float
    forward_b8_cpu_ms: float = float("nan")  # this process's CPU time (all threads) per image of the batch-8 forward
    augment_ips: float = float("nan")  # the project's input pipeline alone, augmentation on, batch_size
    seconds: float = 0.0
    calls: dict = field(default_factory=dict)  # how many timed calls each figure is the median of

    def as_dict(self) -> dict:
        return asdict(self)


_HIGHER_IS_BETTER = (
    "forward_ips",
    "phase1_step_ips",
    "phase2_step_ips",
    "forward_b8_ips",
    "forward_b32_ips",
    "augment_ips",
)
_LOWER_IS_BETTER = ("latency_b1_ms", "latency_b1_p95_ms", "forward_b8_cpu_ms")


def best_of(passes: list[Ceilings]) -> dict:
    """Each figure's best over passes (a ceiling is what the chip can do when left alone), plus every pass."""
    best = passes[0].as_dict()
    for name in _HIGHER_IS_BETTER:
        best[name] = max((getattr(p, name) for p in passes), key=lambda v: -1.0 if math.isnan(v) else v)
    for name in _LOWER_IS_BETTER:
        best[name] = min((getattr(p, name) for p in passes), key=lambda v: math.inf if math.isnan(v) else v)
    best["seconds"] = sum(p.seconds for p in passes)
    best["passes"] = [p.as_dict() for p in passes]
    return best


def _forward_fn(model, batch: np.ndarray):
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False))
    tensor = tf.constant(batch)
    return lambda: forward(tensor).numpy()


def _train_step_fn(model, optimizer, batch: np.ndarray, labels: np.ndarray):
    """A compiled train step on tensors made once (no per-call numpy conversion)."""
    import tensorflow as tf

    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    x, y = tf.constant(batch), tf.constant(labels)
    return lambda: model.train_on_batch(x, y)


def _augment_ips(spec: TrainingSpec, rng: np.random.Generator, *, images: int = 256, passes: int = 3) -> float:
    """Images/s of ``finetune.ml.pipeline.make_dataset`` alone (gather, the seed's augmentation, preprocessing),
    on random uint8 images held in memory, best of ``passes`` passes after one untimed."""
    from finetune.ml.backbones import get_backbone
    from finetune.ml.pipeline import make_dataset

    pixels = rng.integers(0, 256, (images, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    data = make_dataset(
        pixels,
        np.zeros(images, np.int64),
        batch_size=spec.batch_size,
        preprocess=get_backbone(spec.backbone).preprocess(spec.input_scaling),
        augmentation=spec.augmentation,
        shuffle_seed=0,
    )
    best = 0.0
    for number in range(passes + 1):
        started = time.perf_counter()
        for _ in data:
            pass
        if number:
            best = max(best, images / (time.perf_counter() - started))
    return best


def _random_batch(rng: np.random.Generator, size: int, image_size: int, classes: int):
    images = rng.uniform(-1, 1, size=(size, image_size, image_size, 3)).astype("float32")
    return images, rng.integers(0, classes, size)


def measure_ceilings(
    spec: TrainingSpec, classes: int, *, calls: int = 20, max_seconds: float = 20.0, seed: int = 0
) -> Ceilings:
    """All ceilings for one model configuration, measured one after another in this process."""
    import keras

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    model, backbone, _ = build_model(spec, num_classes=classes)
    counts: dict[str, int] = {}

    def median_s(name: str, fn) -> float:
        times = time_calls(fn, calls=calls, max_seconds=max_seconds)
        counts[name] = len(times)
        return statistics.median(times)

    def forward_ips(name: str, size: int) -> float:
        batch, _ = _random_batch(rng, size, spec.image_size, classes)
        return size / median_s(name, _forward_fn(model, batch))

    def forward_cpu_ms(size: int, repeats: int = 10) -> float:
        batch, _ = _random_batch(rng, size, spec.image_size, classes)
        forward = _forward_fn(model, batch)
        forward()
        cpu = time.process_time()
        for _ in range(repeats):
            forward()
        return 1000 * (time.process_time() - cpu) / (repeats * size)

    figures = {
        "forward_ips": forward_ips("forward", spec.batch_size),
        "forward_b8_ips": forward_ips("forward_b8", 8),
        "forward_b8_cpu_ms": forward_cpu_ms(8),
        "forward_b32_ips": forward_ips("forward_b32", 32),
    }
    single, _ = _random_batch(rng, 1, spec.image_size, classes)
    latencies = [
        1000 * t for t in time_calls(_forward_fn(model, single), calls=5 * calls, max_seconds=max_seconds, min_calls=10)
    ]
    counts["latency_b1"] = len(latencies)

    batch, labels = _random_batch(rng, spec.batch_size, spec.image_size, classes)
    backbone.trainable = False
    step = _train_step_fn(model, keras.optimizers.RMSprop(1e-3), batch, labels)
    figures["phase1_step_ips"] = spec.batch_size / median_s("phase1_step", step)
    index = spec.unfreeze_index if spec.finetune is not None else len(backbone.layers)
    unfreeze_from(backbone, index, batchnorm=spec.finetune.batchnorm if spec.finetune is not None else "frozen")
    step = _train_step_fn(model, keras.optimizers.SGD(1e-3), batch, labels)
    figures["phase2_step_ips"] = spec.batch_size / median_s("phase2_step", step)

    if spec.augmentation is not None:
        figures["augment_ips"] = _augment_ips(spec, rng)
    return Ceilings(
        batch_size=spec.batch_size,
        unfreeze_index=index,
        latency_b1_ms=statistics.median(latencies),
        latency_b1_p95_ms=percentile(latencies, 95),
        seconds=time.perf_counter() - started,
        calls=counts,
        **figures,
    )
