"""Classification report and confusion matrix, computed with numpy."""

from __future__ import annotations

import numpy as np


def _scores(tp: float, predicted: float, actual: float) -> dict[str, float]:
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def evaluate_predictions(y_true, y_pred, classes: list[str]) -> dict:
    """`{accuracy, report: {per_class, macro_avg, weighted_avg, accuracy}, confusion_matrix}`.

    The confusion matrix has one row per true class and one column per predicted class,
    in the order of `classes`.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    n = len(classes)
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    per_class = {
        name: {**_scores(matrix[i, i], predicted[i], support[i]), "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    total = int(support.sum())
    accuracy = float(np.trace(matrix) / total) if total else 0.0

    def average(weights: np.ndarray) -> dict[str, float]:
        weights = weights / weights.sum() if weights.sum() else weights
        return {
            key: float(sum(per_class[name][key] * w for name, w in zip(classes, weights)))
            for key in ("precision", "recall", "f1")
        } | {"support": total}

    return {
        "accuracy": accuracy,
        "report": {
            "per_class": per_class,
            "macro_avg": average(np.ones(n)),
            "weighted_avg": average(support.astype(float)),
            "accuracy": accuracy,
        },
        "confusion_matrix": matrix.tolist(),
    }


def format_report(metrics: dict, classes: list[str]) -> str:
    """The report as text, like scikit-learn's classification_report."""
    width = max(12, *(len(name) for name in classes))
    lines = [f"{'':>{width}}  precision    recall  f1-score   support", ""]
    rows = [(name, metrics["report"]["per_class"][name]) for name in classes]
    for name, row in rows:
        lines.append(
            f"{name:>{width}}  {row['precision']:9.2f} {row['recall']:9.2f} {row['f1']:9.2f} {row['support']:9d}"
        )
    total = metrics["report"]["macro_avg"]["support"]
    lines += ["", f"{'accuracy':>{width}}  {'':9} {'':9} {metrics['accuracy']:9.2f} {total:9d}"]
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        row = metrics["report"][key]
        lines.append(
            f"{label:>{width}}  {row['precision']:9.2f} {row['recall']:9.2f} {row['f1']:9.2f} {row['support']:9d}"
        )
    return "\n".join(lines)
