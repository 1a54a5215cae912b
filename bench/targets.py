"""The pass/fail targets of the benchmark, each a named check on the results.

PROVISIONAL: set before the first run, to be replaced by issue 6's own figures.
A target whose inputs are missing (a section failed) reads "not measured".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Target:
    name: str
    threshold: float
    higher_is_better: bool
    value: Callable[[dict], float]  # from the derived figures (bench.report.derive)
    unit: str = ""

    def evaluate(self, figures: dict) -> tuple[float | None, str]:
        try:
            value = self.value(figures)
        except (KeyError, TypeError, ZeroDivisionError):
            return None, "not measured"
        if value is None or math.isnan(value):
            return None, "not measured"
        ok = value >= self.threshold if self.higher_is_better else value <= self.threshold
        return value, "pass" if ok else "FAIL"


TARGETS = [
    Target("project phase 1 (augmented) / phase-1 train-step ceiling", 0.5, True,
           lambda f: f["ratio"]["warmup_aug_vs_ceiling"]),
    Target("project phase 2 / phase-2 train-step ceiling", 0.5, True,
           lambda f: f["ratio"]["finetune_vs_ceiling"]),
    Target("project / seed, phase 1 (steady images/s)", 1.0, True,
           lambda f: f["ratio"]["warmup_aug_vs_seed"]),
    Target("project / seed, phase 2 (steady images/s)", 1.0, True,
           lambda f: f["ratio"]["finetune_vs_seed"]),
    Target("feature-cache phase 1 / augmented phase 1 (wall images/s)", 1.0, True,
           lambda f: f["ratio"]["warmup_cache_vs_aug_wall"]),
    Target("/predict p50 minus raw batch-1 forward", 50.0, False,
           lambda f: f["serving"]["p50_overhead_ms"], "ms"),
    Target("/predict throughput, 8 clients / raw batch-8 forward", 0.25, True,
           lambda f: f["serving"]["c8_vs_b8"]),
    Target("/predict errors over every request", 0.0, False,
           lambda f: f["serving"]["errors"]),
]
