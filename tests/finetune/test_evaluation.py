"""Classification report and confusion matrix, checked against a hand-computed example."""

from __future__ import annotations

import json

import numpy as np
import pytest

from finetune.ml.evaluation import evaluate_predictions, format_report

CLASSES = ["cat", "dog", "panda"]
# true:       cat cat cat cat | dog dog dog | panda panda panda
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
# confusion (rows true, cols predicted):
#   cat   [2, 1, 1]   support 4
#   dog   [1, 2, 0]   support 3
#   panda [0, 1, 2]   support 3
#   predicted totals   3, 4, 3


@pytest.fixture(scope="module")
def metrics():
    return evaluate_predictions(Y_TRUE, Y_PRED, CLASSES)


def test_confusion_matrix_has_true_rows_and_predicted_columns(metrics):
    assert metrics["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]


def test_confusion_matrix_is_not_transposed():
    # one cat called a dog: row cat, column dog
    matrix = evaluate_predictions([0, 1], [1, 1], ["cat", "dog"])["confusion_matrix"]
    assert matrix == [[0, 1], [0, 1]]


def test_accuracy(metrics):
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["report"]["accuracy"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("name", "precision", "recall", "f1", "support"),
    [
        ("cat", 2 / 3, 2 / 4, 4 / 7, 4),
        ("dog", 2 / 4, 2 / 3, 4 / 7, 3),
        ("panda", 2 / 3, 2 / 3, 2 / 3, 3),
    ],
)
def test_per_class_scores(metrics, name, precision, recall, f1, support):
    row = metrics["report"]["per_class"][name]
    assert row["precision"] == pytest.approx(precision)
    assert row["recall"] == pytest.approx(recall)
    assert row["f1"] == pytest.approx(f1)
    assert row["support"] == support
    assert type(row["support"]) is int


def test_per_class_rows_follow_the_class_order(metrics):
    assert list(metrics["report"]["per_class"]) == CLASSES


def test_macro_average_weighs_classes_equally(metrics):
    macro = metrics["report"]["macro_avg"]
    assert macro["precision"] == pytest.approx(11 / 18)
    assert macro["recall"] == pytest.approx(11 / 18)
    assert macro["f1"] == pytest.approx(38 / 63)
    assert macro["support"] == 10


def test_weighted_average_weighs_classes_by_support(metrics):
    weighted = metrics["report"]["weighted_avg"]
    assert weighted["precision"] == pytest.approx(37 / 60)
    assert weighted["recall"] == pytest.approx(0.6)  # always the accuracy
    assert weighted["f1"] == pytest.approx(0.6)
    assert weighted["support"] == 10


def test_the_result_is_plain_json(metrics):
    assert json.loads(json.dumps(metrics)) == metrics


def test_numpy_inputs_give_the_same_result(metrics):
    assert evaluate_predictions(np.array(Y_TRUE), np.array(Y_PRED, dtype=np.int32), CLASSES) == metrics


def test_perfect_predictions():
    result = evaluate_predictions([0, 1, 1, 2], [0, 1, 1, 2], CLASSES)
    assert result["accuracy"] == 1.0
    for row in result["report"]["per_class"].values():
        assert (row["precision"], row["recall"], row["f1"]) == (1.0, 1.0, 1.0)
    assert result["confusion_matrix"] == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]


def test_a_class_never_predicted_scores_zero_precision_not_nan():
    result = evaluate_predictions([0, 0, 1, 1], [0, 0, 0, 0], ["cat", "dog"])
    dog = result["report"]["per_class"]["dog"]
    assert (dog["precision"], dog["recall"], dog["f1"], dog["support"]) == (0.0, 0.0, 0.0, 2)
    cat = result["report"]["per_class"]["cat"]
    assert cat["precision"] == pytest.approx(0.5) and cat["recall"] == 1.0
    assert cat["f1"] == pytest.approx(2 / 3)
    assert result["accuracy"] == 0.5


def test_a_class_without_support_scores_zero_recall_not_nan():
    result = evaluate_predictions([0, 0, 1], [0, 2, 1], CLASSES)
    panda = result["report"]["per_class"]["panda"]
    assert (panda["precision"], panda["recall"], panda["f1"], panda["support"]) == (0.0, 0.0, 0.0, 0)
    assert result["confusion_matrix"][2] == [0, 0, 0]
    assert result["report"]["macro_avg"]["recall"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # a class without support adds nothing to the weighted average
    assert result["report"]["weighted_avg"]["recall"] == pytest.approx(2 / 3)


def test_no_predictions_at_all_gives_zeros():
    result = evaluate_predictions([], [], ["cat", "dog"])
    assert result["accuracy"] == 0.0
    assert result["confusion_matrix"] == [[0, 0], [0, 0]]
    for key in ("macro_avg", "weighted_avg"):
        row = result["report"][key]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == (0.0, 0.0, 0.0, 0)
    assert not any(np.isnan(v) for row in result["report"]["per_class"].values() for v in row.values())


def test_format_report_lists_each_class_and_the_averages(metrics):
    text = format_report(metrics, CLASSES)
    lines = text.splitlines()
    assert "precision" in lines[0] and "recall" in lines[0] and "f1-score" in lines[0] and "support" in lines[0]
    for name, numbers in [("cat", "0.67 0.50 0.57 4"), ("dog", "0.50 0.67 0.57 3"), ("panda", "0.67 0.67 0.67 3")]:
        row = next(line for line in lines if line.split() and line.split()[0] == name)
        assert " ".join(row.split()[1:]) == numbers
    accuracy = next(line for line in lines if line.strip().startswith("accuracy"))
    assert accuracy.split()[1:] == ["0.60", "10"]
    macro = next(line for line in lines if line.strip().startswith("macro avg"))
    assert macro.split()[2:] == ["0.61", "0.61", "0.60", "10"]
    assert any(line.strip().startswith("weighted avg") for line in lines)


def test_format_report_fits_long_class_names():
    names = ["a_really_long_class_name_here", "b"]
    text = format_report(evaluate_predictions([0, 1], [0, 1], names), names)
    assert "a_really_long_class_name_here" in text
    widths = {len(line) for line in text.splitlines() if line.strip() and "avg" not in line and "accuracy" not in line}
    assert len(widths) == 1  # columns line up
