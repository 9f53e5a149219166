"""Evaluation metrics: top-1/top-5, confusion matrix, per-class and shot-group accuracy."""

from __future__ import annotations

import pytest
import torch

from bbn.metrics import classification_metrics, confusion_matrix, topk_correct

C = 6
# many (> 100): classes 0, 1; medium (20..100): 2, 3; few (< 20): 4, 5
TRAIN_COUNTS = [500, 101, 100, 20, 19, 5]


def row(pred: int, label: int, label_last: bool = False) -> list[float]:
    """Logits whose argmax is `pred`; the label is 2nd (or last, when `label_last`)."""
    s = [0.1 * i for i in range(C)]
    s[pred] = 10.0
    if label != pred:
        s[label] = -10.0 if label_last else 5.0
    return s


# (label, prediction, label ranked last) per test image
SAMPLES = [
    (0, 0, False), (0, 0, False),                                # class 0: 2/2
    (1, 1, False), (1, 0, False), (1, 1, False), (1, 2, False),  # class 1: 2/4
    (2, 2, False), (2, 3, False),                                # class 2: 1/2
    (3, 0, True),                                                # class 3: 0/1, not even top-5
    (4, 4, False), (4, 5, True), (4, 5, False),                  # class 4: 1/3
    (5, 5, False), (5, 5, False),                                # class 5: 2/2
]


def logits_labels(samples=SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor([row(p, y, last) for y, p, last in samples])
    labels = torch.tensor([y for y, _, _ in samples])
    return logits, labels


def test_hand_logits_are_what_they_say() -> None:
    logits, _ = logits_labels()
    assert logits.argmax(dim=1).tolist() == [p for _, p, _ in SAMPLES]


def test_top1_top5_error() -> None:
    logits, labels = logits_labels()
    m = classification_metrics(logits, labels, TRAIN_COUNTS)
    assert m["top1"] == pytest.approx(8 / 14 * 100)
    assert m["top5"] == pytest.approx(12 / 14 * 100)
    assert m["error"] == pytest.approx(100 - 8 / 14 * 100)


def test_topk_correct() -> None:
    logits, labels = logits_labels()
    top1 = topk_correct(logits, labels, 1)
    assert top1.tolist() == [y == p for y, p, _ in SAMPLES]
    top5 = topk_correct(logits, labels, 5)
    assert top5.tolist() == [not last for _, _, last in SAMPLES]
    assert topk_correct(logits, labels, 2).tolist() == [not last for _, _, last in SAMPLES]
    # k larger than the number of classes: everything is correct
    assert bool(topk_correct(logits, labels, 50).all())


def test_confusion_matrix_rows_are_true_classes() -> None:
    cm = confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([1, 1, 0]), 2)
    assert cm.tolist() == [[0, 1], [2, 0]]
    logits, labels = logits_labels()
    m = classification_metrics(logits, labels, TRAIN_COUNTS)
    assert m["confusion"] == [
        [2, 0, 0, 0, 0, 0],
        [1, 2, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 2],
        [0, 0, 0, 0, 0, 2],
    ]


def test_per_class_accuracy() -> None:
    logits, labels = logits_labels()
    m = classification_metrics(logits, labels, TRAIN_COUNTS)
    assert m["per_class"] == pytest.approx([100.0, 50.0, 50.0, 0.0, 100 / 3, 100.0])


def test_shot_groups_are_means_of_per_class_accuracies() -> None:
    logits, labels = logits_labels()
    m = classification_metrics(logits, labels, TRAIN_COUNTS)
    # class means, NOT image-weighted (which would give 4/6, 1/3 and 3/5)
    assert m["many"] == pytest.approx((100 + 50) / 2)
    assert m["medium"] == pytest.approx((50 + 0) / 2)
    assert m["few"] == pytest.approx((100 / 3 + 100) / 2)


def test_boundaries_of_shot_groups() -> None:
    # 101 is many, 100 and 20 are medium, 19 is few: move one correct class across a boundary
    logits, labels = logits_labels()
    counts = [500, 100, 100, 20, 19, 5]  # class 1 becomes medium
    m = classification_metrics(logits, labels, counts)
    assert m["many"] == pytest.approx(100.0)
    assert m["medium"] == pytest.approx((50 + 50 + 0) / 3)
    counts = [500, 101, 100, 19, 19, 5]  # class 3 becomes few
    m = classification_metrics(logits, labels, counts)
    assert m["medium"] == pytest.approx(50.0)
    assert m["few"] == pytest.approx((0 + 100 / 3 + 100) / 3)


def test_empty_group_is_none() -> None:
    logits, labels = logits_labels()
    m = classification_metrics(logits, labels, [1000, 500, 300, 200, 150, 101])
    assert m["many"] == pytest.approx((100 + 50 + 50 + 0 + 100 / 3 + 100) / 6)
    assert m["medium"] is None
    assert m["few"] is None


def test_classes_absent_from_test_set() -> None:
    # drop every test image of class 2 (medium) and of class 5 (few)
    kept = [s for s in SAMPLES if s[0] not in (2, 5)]
    logits, labels = logits_labels(kept)
    m = classification_metrics(logits, labels, TRAIN_COUNTS)
    assert m["per_class"][2] is None and m["per_class"][5] is None
    assert m["per_class"][3] == 0.0
    assert m["medium"] == pytest.approx(0.0)  # class 3 only, class 2 skipped (not counted as 0)
    assert m["few"] == pytest.approx(100 / 3)
    assert m["top1"] == pytest.approx(5 / 10 * 100)
    # a group none of whose classes is in the test set is None
    kept = [s for s in SAMPLES if s[0] not in (4, 5)]
    m = classification_metrics(*logits_labels(kept), TRAIN_COUNTS)
    assert m["few"] is None
    assert m["many"] == pytest.approx(75.0)


def test_metrics_accept_half_precision_logits() -> None:
    logits, labels = logits_labels()
    m = classification_metrics(logits.half(), labels, TRAIN_COUNTS)
    assert m["top1"] == pytest.approx(8 / 14 * 100)
