"""Scores beyond the confusion matrix, on held-out probabilities: per-class precision-recall curves,
average precision and ROC AUC (one class against the rest, as scikit-learn computes them), macro mAP,
and the expected calibration error with its reliability-diagram bins. Computed once, when a job ends."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

MAX_CURVE_POINTS = 100
CALIBRATION_BINS = 10


def evaluation_curves(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """`{per_class: {name: {ap, roc_auc, pr_curve: {precision, recall, thresholds}}}, macro_map,
    calibration: {ece, bins}}`. A class absent from the labels has no AP or AUC (None)."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    per_class = {name: _class_curve(labels == index, probabilities[:, index]) for index, name in enumerate(classes)}
    scores = [row["ap"] for row in per_class.values() if row["ap"] is not None]
    return {
        "per_class": per_class,
        "macro_map": float(np.mean(scores)) if scores else None,
        "calibration": calibration(labels, probabilities),
        "count": int(len(labels)),
    }


def _class_curve(positive: np.ndarray, scores: np.ndarray) -> dict:
    if not positive.any():
        return {"ap": None, "roc_auc": None, "pr_curve": None}
    precision, recall, thresholds = precision_recall_curve(positive, scores)
    both = positive.any() and not positive.all()
    return {
        "ap": float(average_precision_score(positive, scores)),
        "roc_auc": float(roc_auc_score(positive, scores)) if both else None,
        "pr_curve": _thinned(precision[:-1], recall[:-1], thresholds),
    }


def _thinned(precision: np.ndarray, recall: np.ndarray, thresholds: np.ndarray) -> dict:
    """At most MAX_CURVE_POINTS points of the curve, evenly spaced along it, both ends kept."""
    keep = np.unique(np.linspace(0, len(thresholds) - 1, min(len(thresholds), MAX_CURVE_POINTS)).round().astype(int))
    return {
        "precision": [float(v) for v in precision[keep]],
        "recall": [float(v) for v in recall[keep]],
        "thresholds": [float(v) for v in thresholds[keep]],
    }


def calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error of the top-1 confidence, over `bins` equal-width bins of (0, 1]:
    the mean |accuracy - confidence| of the bins, weighted by how many images each holds."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for index in range(bins):
        members = which == index
        count = int(members.sum())
        row = {
            "low": float(edges[index]),
            "high": float(edges[index + 1]),
            "count": count,
            "confidence": None,
            "accuracy": None,
        }
        if count:
            row["confidence"] = float(confidence[members].mean())
            row["accuracy"] = float(correct[members].mean())
            ece += count / len(labels) * abs(row["accuracy"] - row["confidence"])
        rows.append(row)
    return {"ece": float(ece) if len(labels) else None, "bins": rows}
