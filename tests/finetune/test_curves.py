"""Held-out curves and scores, per-class thresholds and abstaining predictions, checked against
scikit-learn on fixed predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from finetune.ml.curves import MAX_CURVE_POINTS, calibration, evaluation_curves
from finetune.ml.thresholds import decide, measure_thresholds, pick_thresholds

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture
def fixed():
    """300 held-out images of 3 classes with noisy but informative probabilities (fixed seed)."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(0, 1, (300, 3))
    logits[np.arange(300), labels] += 1.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


def test_ap_and_auc_per_class_and_macro_map_equal_scikit_learn(fixed):
    labels, probabilities = fixed
    curves = evaluation_curves(labels, probabilities, CLASSES)
    aps = []
    for index, name in enumerate(CLASSES):
        row = curves["per_class"][name]
        expected_ap = average_precision_score(labels == index, probabilities[:, index])
        assert row["ap"] == pytest.approx(expected_ap, abs=1e-12)
        assert row["roc_auc"] == pytest.approx(roc_auc_score(labels == index, probabilities[:, index]), abs=1e-12)
        aps.append(expected_ap)
    assert curves["macro_map"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert curves["count"] == 300


def test_the_pr_curve_is_thinned_to_points_of_scikit_learns_curve(fixed):
    labels, probabilities = fixed
    row = evaluation_curves(labels, probabilities, CLASSES)["per_class"]["dog"]["pr_curve"]
    precision, recall, thresholds = precision_recall_curve(labels == 1, probabilities[:, 1])
    assert len(row["thresholds"]) == MAX_CURVE_POINTS < len(thresholds)
    assert row["thresholds"][0] == thresholds[0] and row["thresholds"][-1] == thresholds[-1]
    for threshold, p, r in zip(row["thresholds"], row["precision"], row["recall"]):
        index = int(np.flatnonzero(thresholds == threshold)[0])
        assert (p, r) == (precision[index], recall[index])


def test_a_class_without_held_out_images_has_no_scores():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1]])
    curves = evaluation_curves(labels, probabilities, CLASSES)
    assert curves["per_class"]["fox"] == {"ap": None, "roc_auc": None, "pr_curve": None}
    assert curves["macro_map"] == pytest.approx(np.mean([curves["per_class"][c]["ap"] for c in ("cat", "dog")]))


def test_calibration_bins_and_ece_by_hand():
    labels = np.array([0, 0, 1, 1])
    # top-1 confidences 0.95 (right), 0.95 (wrong), 0.55 (right), 0.65 (wrong)
    probabilities = np.array([[0.95, 0.05], [0.05, 0.95], [0.45, 0.55], [0.65, 0.35]])
    result = calibration(labels, probabilities, bins=10)
    counts = [row["count"] for row in result["bins"]]
    assert counts == [0, 0, 0, 0, 0, 1, 1, 0, 0, 2]
    top = result["bins"][9]
    assert (top["confidence"], top["accuracy"]) == (pytest.approx(0.95), 0.5)
    expected = 0.5 * abs(0.5 - 0.95) + 0.25 * abs(1.0 - 0.55) + 0.25 * abs(0.0 - 0.65)
    assert result["ece"] == pytest.approx(expected)


@pytest.mark.parametrize("target", [0.6, 0.8, 0.95])
def test_thresholds_are_the_lowest_that_reach_the_target_on_scikit_learns_curve(fixed, target):
    labels, probabilities = fixed
    picked = pick_thresholds(labels, probabilities, CLASSES, target_precision=target)
    for index, name in enumerate(CLASSES):
        precision, recall, thresholds = precision_recall_curve(labels == index, probabilities[:, index])
        reaching = [i for i in range(len(thresholds)) if precision[i] >= target]
        if not reaching:
            assert picked[name]["threshold"] is None and "no threshold reaches" in picked[name]["reason"]
            continue
        best = min(reaching, key=lambda i: thresholds[i])
        assert picked[name] == {"threshold": thresholds[best], "precision": precision[best], "recall": recall[best]}
        # measured again at that threshold: the same precision and recall
        again = measure_thresholds(labels, probabilities, CLASSES, {name: thresholds[best]})[name]
        assert again["precision"] == pytest.approx(precision[best]) and again["recall"] == pytest.approx(recall[best])


def test_an_unreachable_target_is_recorded_as_such():
    labels = np.array([0, 1, 0, 1])
    probabilities = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    picked = pick_thresholds(labels, probabilities, ["a", "b"], target_precision=0.9)
    assert picked["a"]["threshold"] is None and picked["b"]["threshold"] is None


def test_a_global_threshold_above_every_probability_abstains_on_all_and_zero_on_none(fixed):
    _, probabilities = fixed
    assert decide(probabilities, CLASSES, None, override=float(probabilities.max()) + 1e-6) == [None] * 300
    labels = decide(probabilities, CLASSES, None, override=0.0)
    assert labels == [CLASSES[i] for i in probabilities.argmax(axis=1)]
    assert decide(probabilities, CLASSES, None) == labels  # no thresholds: nothing changes


def test_per_class_thresholds_abstain_only_on_their_class():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    labels = decide(probabilities, CLASSES, {"cat": 0.8, "dog": 0.5, "fox": None})
    assert labels == [None, "dog", "fox"]
