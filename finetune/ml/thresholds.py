"""Per-class probability thresholds, and predictions that abstain below them.

A class's threshold is picked on held-out probabilities, one class against the rest: the lowest
threshold at which the held-out precision of "this class" reaches the target (the first such point
of scikit-learn's precision-recall curve), so recall is as high as the target precision allows.
At prediction time the top-1 class is the answer only when its probability reaches its class's
threshold; otherwise the prediction abstains (label None)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve


def pick_thresholds(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str], *, target_precision: float
) -> dict[str, dict]:
    """Per class `{threshold, precision, recall}`; threshold None (and why) when no threshold reaches the target."""
    labels = np.asarray(labels, dtype=np.int64)
    picked = {}
    for index, name in enumerate(classes):
        positive = labels == index
        if not positive.any():
            picked[name] = {"threshold": None, "precision": None, "recall": None, "reason": "no held-out image"}
            continue
        precision, recall, thresholds = precision_recall_curve(positive, probabilities[:, index])
        reaching = np.flatnonzero(precision[:-1] >= target_precision)
        if not len(reaching):
            picked[name] = {
                "threshold": None,
                "precision": None,
                "recall": None,
                "reason": f"no threshold reaches precision {target_precision:g}",
            }
            continue
        best = reaching[np.argmin(thresholds[reaching])]
        picked[name] = {
            "threshold": float(thresholds[best]),
            "precision": float(precision[best]),
            "recall": float(recall[best]),
        }
    return picked


def measure_thresholds(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str], values: dict[str, float | None]
) -> dict[str, dict]:
    """Per class `{threshold, precision, recall}` on held-out probabilities for given thresholds
    (one class against the rest; precision None when nothing reaches the threshold)."""
    labels = np.asarray(labels, dtype=np.int64)
    measured = {}
    for index, name in enumerate(classes):
        threshold = values.get(name)
        if threshold is None:
            measured[name] = {"threshold": None, "precision": None, "recall": None}
            continue
        chosen = probabilities[:, index] >= threshold
        positive = labels == index
        hits = int((chosen & positive).sum())
        measured[name] = {
            "threshold": float(threshold),
            "precision": hits / int(chosen.sum()) if chosen.any() else None,
            "recall": hits / int(positive.sum()) if positive.any() else None,
        }
    return measured


def decide(
    probabilities: np.ndarray,
    classes: list[str],
    thresholds: dict[str, float | None] | None,
    override: float | None = None,
) -> list[str | None]:
    """The label of each row: its top-1 class when that probability reaches the threshold (`override`
    for every class when given, else the class's own; a class without one always answers), else None."""
    top = np.argmax(probabilities, axis=1)
    labels: list[str | None] = []
    for row, index in zip(probabilities, top):
        threshold = override if override is not None else (thresholds or {}).get(classes[index])
        labels.append(classes[index] if threshold is None or row[index] >= threshold else None)
    return labels
