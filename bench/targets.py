"""The pass/fail targets of the benchmark: issue 6's, each a named check on the derived figures.

Training throughput is judged on the **train** figure of each phase: training images over
the phase's training time, from each epoch's start to its last batch's end — every batch
of the phase counts, the first one with its tracing and the input pipeline's start-up
included; only the per-epoch validation passes are left out, on both sides (the ceilings
time no validation either). The **steady** figure (per-batch rate, each epoch's first
batch left out) and the **wall** figure (the whole phase, validation included) are
reported beside it. The feature-cache target is about the whole phase (wall time,
feature extraction included), as the issue words it.

Thresholds that depend on the model: 0.9 of the ceiling for VGG16 (compute-bound, where
only the pipeline's overhead can be won), 0.6 otherwise; the 3x-the-seed targets are
stated for MobileNet alpha 0.25 only and apply to it alone.

The worker's memory is reported, not judged (the issue asks for it to be reported): its growth
is the decoded data set, the model and a working set that does not grow with the data (TensorFlow's
allocations for a batch, the input pipeline's few batches, the allocator's arenas).

A target whose inputs are missing (a section failed) reads "not measured".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    threshold: float | None  # None: reported, not judged
    higher_is_better: bool
    value: Callable[[dict], float]  # from the derived figures (bench.report.derive)
    unit: str = ""

    def evaluate(self, figures: dict) -> tuple[float | None, str]:
        try:
            value = self.value(figures)
        except (KeyError, TypeError, ZeroDivisionError):
            return None, "not measured"
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None, "not measured"
        if self.threshold is None:
            return value, "reported"
        ok = value >= self.threshold if self.higher_is_better else value <= self.threshold
        return value, "pass" if ok else "FAIL"


def ceiling_share(backbone: str | None) -> float:
    return 0.9 if backbone == "vgg16" else 0.6


def targets_for(meta: dict | None) -> list[Target]:
    """Issue 6's targets for the run's model (``results["meta"]``: backbone and alpha)."""
    meta = meta or {}
    backbone, alpha = meta.get("backbone"), meta.get("alpha")
    share = ceiling_share(backbone)
    targets = [
        Target(
            "phase 1 (augmented), train images/s / frozen forward-pass ceiling",
            share,
            True,
            lambda f: f["ratio"]["warmup_train_vs_ceiling"],
        ),
        Target(
            "phase 2 (augmented), train images/s / phase-2 train-step ceiling",
            share,
            True,
            lambda f: f["ratio"]["finetune_train_vs_ceiling"],
        ),
    ]
    if backbone == "mobilenet" and alpha == 0.25:
        targets += [
            Target(
                "phase 1 (augmented), project / seed (train images/s)",
                3.0,
                True,
                lambda f: f["ratio"]["warmup_train_vs_seed"],
            ),
            Target(
                "phase 2 (augmented), project / seed (train images/s)",
                3.0,
                True,
                lambda f: f["ratio"]["finetune_train_vs_seed"],
            ),
        ]
    targets += [
        Target(
            "phase 1 without augmentation (feature cache): seed's phase-1 wall / the project's",
            10.0,
            True,
            lambda f: f["ratio"]["cache_speedup_vs_seed_wall"],
        ),
        Target(
            "validation accuracy: project (both phases) minus seed (both phases)",
            0.0,
            True,
            lambda f: f["accuracy"]["project_minus_seed"],
        ),
        Target("/predict p50 minus raw batch-1 forward", 1.0, False, lambda f: f["serving"]["p50_overhead_ms"], " ms"),
        Target("/predict throughput, 8 clients / raw batch-8 forward", 0.75, True, lambda f: f["serving"]["c8_vs_b8"]),
        Target(
            "/predict throughput, 8 clients / the API's Predictor at batch 8 in its own thread set-up (no HTTP)",
            None,
            True,
            lambda f: f["serving"]["c8_vs_api_raw_b8"],
        ),
        Target(
            "/predict, 8 clients: CPU-bound limit (cores / CPU per request) / raw batch-8 forward",
            None,
            True,
            lambda f: f["serving"]["c8_cpu_bound"]["vs_b8"],
        ),
        Target("/predict errors over every request", 0.0, False, lambda f: f["serving"]["errors"]),
        Target("batch prediction images/s / raw batched forward", 0.8, True, lambda f: f["batches"]["vs_raw"]),
        Target(
            "worker: peak memory growth / (decoded dataset + model)",
            None,
            False,
            lambda f: f["memory"]["worker_growth_vs_bound"],
        ),
        Target(
            "worker: growth beyond the same job on 4 images per class / decoded bytes beyond it",
            None,
            False,
            lambda f: f["memory"]["worker_data_growth_vs_decoded"],
        ),
        Target(
            "API: memory added past the cache's size (two rounds of loads and evictions) / one cached model",
            1.0,
            False,
            lambda f: f["memory"]["api_past_cache_vs_per_model"],
        ),
    ]
    return targets


TARGETS = targets_for({"backbone": "mobilenet", "alpha": 0.25})  # the default run's
