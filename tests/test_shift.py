"""Accuracy under shifted test priors (bbn.engine.shift), checked by hand."""

from __future__ import annotations

import pytest
import torch

from bbn.engine.metrics import prediction_metrics
from bbn.engine.shift import prior_keys, shift_priors, shifted_prior_accuracy

# training counts: class 1 is the head (rank 0), class 2 rank 1, class 0 the tail (rank 2)
COUNTS = [10, 100, 50]
ACC = [20.0, 80.0, 50.0]


def test_priors_by_hand() -> None:
    # ratio 4 over C = 3 classes: rank r gets 4^(-r/2) = 1, 1/2, 1/4
    assert shift_priors(COUNTS, 4) == pytest.approx([0.25, 1.0, 0.5])
    assert shift_priors(COUNTS, 4, backward=True) == pytest.approx([1.0, 0.25, 0.5])
    # head / tail prior is the imbalance ratio
    p = shift_priors([500, 200, 90, 40, 5], 50)
    assert max(p) / min(p) == pytest.approx(50.0)


def test_shifted_accuracy_by_hand() -> None:
    out = shifted_prior_accuracy(ACC, COUNTS, ratios=(4,))
    assert list(out) == ["forward4", "uniform", "backward4"]
    # forward: (80 * 1 + 50 * 1/2 + 20 * 1/4) / 1.75 = 110 / 1.75
    assert out["forward4"] == pytest.approx(110 / 1.75)
    # backward: (80 * 1/4 + 50 * 1/2 + 20 * 1) / 1.75 = 65 / 1.75
    assert out["backward4"] == pytest.approx(65 / 1.75)
    assert out["uniform"] == pytest.approx(50.0)


def test_ties_are_ranked_by_class_id() -> None:
    # classes 0 and 1 tie at 50 images: class 0 ranks first (prior 1), class 1 second (1/2)
    out = shifted_prior_accuracy([100.0, 0.0, 0.0], [50, 50, 10], ratios=(4,))
    assert out["forward4"] == pytest.approx(100 / 1.75)
    assert out["backward4"] == pytest.approx(25 / 1.75)


def test_classes_without_a_test_accuracy_are_renormalised_away() -> None:
    out = shifted_prior_accuracy([None, 80.0, 50.0], COUNTS, ratios=(4,))
    assert out["forward4"] == pytest.approx((80 + 25) / 1.5)
    assert out["backward4"] == pytest.approx((20 + 25) / 0.75)
    assert out["uniform"] == pytest.approx(65.0)
    assert shifted_prior_accuracy([None, None], [5, 1]) is None


def test_default_protocol_keys_and_one_class() -> None:
    assert prior_keys() == ["forward50", "forward25", "forward10", "forward5", "forward2", "uniform",
                            "backward2", "backward5", "backward10", "backward25", "backward50"]
    out = shifted_prior_accuracy([100.0, 0.0], [9, 3])
    assert list(out) == prior_keys()
    # two classes at ratio R: the head gets R / (R + 1) of the test images forward, 1 / (R + 1) backward
    for r in (2, 5, 10, 25, 50):
        assert out[f"forward{r}"] == pytest.approx(100 * r / (r + 1))
        assert out[f"backward{r}"] == pytest.approx(100 / (r + 1))
    assert shifted_prior_accuracy([42.0], [7]) == {k: pytest.approx(42.0) for k in prior_keys()}


def test_results_carry_the_shifted_priors() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0])
    m = prediction_metrics(pred, pred == labels, labels, [10, 100, 50])  # per class 50, 100, 0
    assert m["shifted_priors"]["uniform"] == pytest.approx(m["balanced_acc"]) == pytest.approx(50.0)
    assert m["shifted_priors"]["forward50"] > m["shifted_priors"]["uniform"] > m["shifted_priors"]["backward50"]
