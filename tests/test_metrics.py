"""Evaluation metrics: top-1/top-5, sparse confusion, per-class and shot-group accuracy,
balanced accuracy, macro-F1, NLL, ECE and its reliability bins, the summary lines; the
results file (final.json / eval.json) format 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bbn.errors import BBNError
from bbn.engine.metrics import (classification_metrics, macro_f1, prediction_metrics, probability_metrics,
                                summary_lines, topk_correct)
from bbn.engine.results import FORMAT, confusion_cells, dense_confusion, sparse_confusion, write_results

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


def test_confusion_rows_are_true_classes() -> None:
    cm = sparse_confusion(torch.tensor([0, 0, 1]), torch.tensor([1, 1, 0]), 2)
    assert cm == {"format": "coo", "num_classes": 2, "pairs": [[0, 1, 1], [1, 0, 2]]}
    assert dense_confusion(cm).tolist() == [[0, 1], [2, 0]]
    logits, labels = logits_labels()
    m = classification_metrics(logits, labels, TRAIN_COUNTS)
    assert m["confusion"]["format"] == "coo"  # sparse: only the nonzero cells
    assert len(m["confusion"]["pairs"]) == 10
    assert dense_confusion(m["confusion"]).tolist() == [
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


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_in_the_test_set() -> None:
    logits, labels = logits_labels()
    m = classification_metrics(logits, labels, TRAIN_COUNTS)
    # recalls 2/2, 2/4, 1/2, 0/1, 1/3, 2/2 (top-1 8/14 = 57.14% weighs class 1's 4 images more)
    assert m["balanced_acc"] == pytest.approx((100 + 50 + 50 + 0 + 100 / 3 + 100) / 6)
    kept = [s for s in SAMPLES if s[0] not in (2, 5)]  # absent classes are left out, not 0
    m = classification_metrics(*logits_labels(kept), TRAIN_COUNTS)
    assert m["balanced_acc"] == pytest.approx((100 + 50 + 0 + 100 / 3) / 4)


def test_macro_f1_by_hand() -> None:
    logits, labels = logits_labels()
    m = classification_metrics(logits, labels, TRAIN_COUNTS)
    # from the confusion above: TP 2,2,1,0,1,2; predicted 4,2,2,1,1,4; support 2,4,2,1,3,2;
    # F1 = 2TP / (predicted + support) = 4/6, 4/6, 2/4, 0/2, 2/4, 4/6 -> mean (2 + 1) / 6 = 1/2
    assert m["macro_f1"] == pytest.approx(50.0)
    from sklearn.metrics import f1_score
    assert m["macro_f1"] == pytest.approx(100 * f1_score(labels, logits.argmax(1), average="macro"))


def test_macro_f1_rule_for_classes_without_images_or_predictions() -> None:
    # class 2 has no test image and no prediction (0/0): left out. F1 of 0 and 1: 2/3 each.
    assert macro_f1(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 3) == pytest.approx(200 / 3)
    # class 1 is predicted but has no test image: F1 = 0 and counts. Class 0: 2*1 / (1 + 2).
    assert macro_f1(torch.tensor([0, 1]), torch.tensor([0, 0]), 3) == pytest.approx(100 / 3)
    # class 1 has test images but is never predicted: F1 = 0 too
    assert macro_f1(torch.tensor([0, 0]), torch.tensor([0, 1]), 2) == pytest.approx(100 / 3)
    assert macro_f1(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 3) is None


def test_nll_by_hand() -> None:
    # softmax([0, ln 3]) = (1/4, 3/4): the label-1 image costs ln(4/3), the label-0 one ln 4
    logits = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]])
    m = probability_metrics(logits, torch.tensor([1, 0]))
    assert m["nll"] == pytest.approx((math.log(4 / 3) + math.log(4)) / 2)
    assert probability_metrics(logits.half(), torch.tensor([1, 0]))["nll"] == pytest.approx(m["nll"], abs=1e-3)


def _confident(conf: float) -> list[float]:
    """Two-class logits predicting class 1 with softmax confidence `conf`."""
    return [0.0, math.log(conf / (1 - conf))]


def test_ece_and_reliability_bins_by_hand() -> None:
    # 15 bins of width 1/15. Confidence 0.9 falls in bin 13 (0.867, 0.933], 0.7 in bin 10
    # (0.667, 0.733], 0.99 in bin 14 (0.933, 1]. Prediction is class 1; label 1 = correct.
    #   bin 10: 2 images, 1 correct: acc 0.50, conf 0.70, gap 0.20
    #   bin 13: 4 images, 3 correct: acc 0.75, conf 0.90, gap 0.15
    #   bin 14: 1 image,  1 correct: acc 1.00, conf 0.99, gap 0.01
    # ECE = (2 * 0.20 + 4 * 0.15 + 1 * 0.01) / 7 = 1.01 / 7 = 14.43%
    confs = [0.7, 0.7, 0.9, 0.9, 0.9, 0.9, 0.99]
    labels = torch.tensor([1, 0, 1, 1, 1, 0, 1])
    m = probability_metrics(torch.tensor([_confident(c) for c in confs]), labels)
    assert m["ece"] == pytest.approx(101 / 7, rel=1e-5)
    cal = m["calibration"]
    assert cal["bins"] == 15
    assert cal["count"] == [0] * 10 + [2, 0, 0, 4, 1]
    assert cal["accuracy"][:10] == [None] * 10 and cal["confidence"][11:13] == [None, None]
    assert [cal["accuracy"][i] for i in (10, 13, 14)] == pytest.approx([50.0, 75.0, 100.0])
    assert [cal["confidence"][i] for i in (10, 13, 14)] == pytest.approx([70.0, 90.0, 99.0])


def test_ece_of_a_calibrated_model_is_zero_and_results_carry_it() -> None:
    # confidence 0.75 for 4 images of which 3 are right: one bin, acc = conf
    logits = torch.tensor([_confident(0.75)] * 4)
    assert probability_metrics(logits, torch.tensor([1, 1, 0, 1]))["ece"] == pytest.approx(0.0, abs=1e-4)  # float32 logits
    m = classification_metrics(*logits_labels(), TRAIN_COUNTS)
    assert {"balanced_acc", "macro_f1", "nll", "ece", "calibration"} <= set(m)
    assert sum(m["calibration"]["count"]) == len(SAMPLES)
    # prediction_metrics has no logits: no NLL or ECE
    pm = prediction_metrics(logits.argmax(1), torch.ones(4, dtype=torch.bool), torch.tensor([1, 1, 0, 1]), [3, 1])
    assert pm["balanced_acc"] == pytest.approx(50.0) and "nll" not in pm and "ece" not in pm


def test_summary_lines_show_the_new_metrics_and_skip_absent_ones() -> None:
    base = {"top1": 50.0, "top5": 90.0, "error": 50.0, "many": 60.0, "medium": None, "few": 10.0}
    assert len(summary_lines(base)) == 2  # an old results file
    lines = summary_lines({**base, "balanced_acc": 12.345, "macro_f1": 10.0, "nll": 0.1234, "ece": 1.234})
    assert lines[2] == "balanced 12.35%   macro-F1 10.00%   NLL 0.123   ECE 1.23%"
    assert summary_lines({**base, "balanced_acc": 12.345, "macro_f1": 10.0, "nll": None})[2] == (
        "balanced 12.35%   macro-F1 10.00%")


def test_metrics_accept_half_precision_logits() -> None:
    logits, labels = logits_labels()
    m = classification_metrics(logits.half(), labels, TRAIN_COUNTS)
    assert m["top1"] == pytest.approx(8 / 14 * 100)


def _naive_confusion(pred: list[int], labels: list[int], c: int) -> list[list[int]]:
    m = [[0] * c for _ in range(c)]
    for p, y in zip(pred, labels):
        m[y][p] += 1
    return m


@pytest.mark.parametrize("c", [1, 2, 7, 30])
def test_sparse_confusion_round_trips_to_the_dense_matrix(c: int) -> None:
    g = torch.Generator().manual_seed(c)
    labels = torch.randint(0, c, (300,), generator=g)
    pred = torch.where(torch.rand(300, generator=g) < 0.6, labels, torch.randint(0, c, (300,), generator=g))
    dense = _naive_confusion(pred.tolist(), labels.tolist(), c)
    sparse = sparse_confusion(pred, labels, c)
    assert dense_confusion(sparse).tolist() == dense
    assert sum(n for _, _, n in sparse["pairs"]) == 300
    assert all(n > 0 for _, _, n in sparse["pairs"])
    # through the file (JSON) and back, and the old dense form reads the same
    back = json.loads(json.dumps(sparse))
    assert dense_confusion(back).tolist() == dense
    assert dense_confusion(dense).tolist() == dense
    c_old, cells_old = confusion_cells(dense)
    c_new, cells_new = confusion_cells(sparse)
    assert c_old == c_new == c and cells_old.tolist() == cells_new.tolist()


@pytest.mark.parametrize("bad", [{"format": "csr", "num_classes": 2, "pairs": []},
                                 {"format": "coo", "num_classes": 2, "pairs": [[0, 2, 1]]},
                                 [[1, 2, 3]]])
def test_unreadable_confusion_is_one_error(bad: object) -> None:
    with pytest.raises(BBNError, match="confusion"):
        confusion_cells(bad)


def test_final_json_at_inaturalist_2018_scale_stays_small(tmp_path: Path) -> None:
    """8,142 classes (iNaturalist 2018), 20,000 test images with random predictions: the
    results file (format 2, sparse confusion, compact per-class lists) stays under 2 MB."""
    c, n = 8142, 20000
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(2, 1000, (c,), generator=g).tolist()
    labels = torch.randint(0, c, (n,), generator=g)
    pred = torch.where(torch.rand(n, generator=g) < 0.5, labels, torch.randint(0, c, (n,), generator=g))
    top5 = (pred == labels) | (torch.rand(n, generator=g) < 0.2)
    final = prediction_metrics(pred, top5, labels, counts)
    norms = torch.rand(c, generator=g).add(1.0).double().tolist()
    final.update(best_top1=12.3456789, best_epoch=180, class_counts=counts,
                 class_names=[f"Genus{i:05d} species{i:05d}" for i in range(c)], num_params=25_000_000,
                 weight_norms={"BBN-CB": norms, "BBN-RB": norms, "BBN-ALL": norms})
    path = tmp_path / "final.json"
    write_results(path, final)
    size = path.stat().st_size
    assert size < 2 * 1024 * 1024, f"final.json is {size / 1e6:.1f} MB at {c} classes"
    on_disk = json.loads(path.read_text())
    assert on_disk["format"] == FORMAT == 2
    pairs = on_disk["confusion"]["pairs"]
    assert on_disk["confusion"]["num_classes"] == c and len(pairs) <= n
    assert sum(k for _, _, k in pairs) == n
    diag = np.zeros(c)
    for t, p, k in pairs:
        if t == p:
            diag[t] += k
    support = np.bincount(labels.numpy(), minlength=c)
    per_class = [None if s == 0 else 100.0 * d / s for d, s in zip(diag, support)]
    assert on_disk["per_class"] == pytest.approx(per_class)
    assert on_disk["top1"] == pytest.approx(100.0 * float((pred == labels).double().mean()))
