"""The cumulative loss and the shown training accuracy (SPEC §1-§2); Balanced Softmax and the
logit-adjusted loss."""

from __future__ import annotations

import math

import pytest
import torch

from bbn.losses import (balanced_softmax_loss, cumulative_accuracy, cumulative_loss, log_class_counts, log_class_prior,
                        logit_adjusted_loss)


def ce_by_hand(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax(z)[y], written out: log-sum-exp minus the true logit."""
    z = z.double()
    m = z.max(dim=1, keepdim=True).values
    log_softmax = z - m - (z - m).exp().sum(dim=1, keepdim=True).log()
    return -log_softmax[torch.arange(len(y)), y].mean()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=g) * 3
    y_c = torch.randint(0, 5, (8,), generator=g)
    y_r = torch.randint(0, 5, (8,), generator=g)
    assert not torch.equal(y_c, y_r)
    return z, y_c, y_r


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.91, 1.0])
def test_cumulative_loss_by_hand(batch: tuple, alpha: float) -> None:
    z, y_c, y_r = batch
    want = alpha * ce_by_hand(z, y_c) + (1 - alpha) * ce_by_hand(z, y_r)
    got = cumulative_loss(z, y_c, y_r, alpha)
    assert got.shape == ()
    assert float(got) == pytest.approx(float(want), rel=1e-5)


def test_cumulative_loss_on_a_worked_example() -> None:
    # z = [ln 1, ln 3] -> p = [1/4, 3/4]; y_c = 0: CE = ln 4; y_r = 1: CE = ln(4/3)
    z = torch.tensor([[0.0, math.log(3.0)]])
    loss = cumulative_loss(z, torch.tensor([0]), torch.tensor([1]), 0.3)
    assert float(loss) == pytest.approx(0.3 * math.log(4.0) + 0.7 * math.log(4.0 / 3.0), rel=1e-6)
    # equal logits over C classes: CE = ln C whatever the labels and alpha
    flat = torch.zeros(4, 7)
    y = torch.tensor([0, 1, 2, 6])
    assert float(cumulative_loss(flat, y, y.flip(0), 0.37)) == pytest.approx(math.log(7), rel=1e-6)


def test_cumulative_loss_gradient_is_the_mixed_softmax_gradient(batch: tuple) -> None:
    z, y_c, y_r = batch
    z = z.clone().requires_grad_(True)
    alpha = 0.3
    cumulative_loss(z, y_c, y_r, alpha).backward()
    p = torch.softmax(z.detach(), dim=1)
    eye = torch.eye(5)
    # d/dz of mean CE = (p - onehot(y)) / B, mixed by alpha
    want = (alpha * (p - eye[y_c]) + (1 - alpha) * (p - eye[y_r])) / len(y_c)
    assert torch.allclose(z.grad, want, atol=1e-6)


def test_cumulative_accuracy_by_hand() -> None:
    z = torch.tensor([[5.0, 1.0, 0.0],   # pred 0
                      [0.0, 2.0, 1.0],   # pred 1
                      [0.0, 1.0, 3.0],   # pred 2
                      [9.0, 1.0, 3.0]])  # pred 0
    y_c = torch.tensor([0, 1, 0, 0])  # 3 of 4 right
    y_r = torch.tensor([1, 1, 2, 2])  # 2 of 4 right
    for alpha, want in ((0.3, 0.3 * 0.75 + 0.7 * 0.5), (1.0, 0.75), (0.0, 0.5), (0.5, 0.625)):
        got = cumulative_accuracy(z, y_c, y_r, alpha)
        assert float(got) == pytest.approx(want, abs=1e-7), alpha


def test_cumulative_accuracy_matches_generic_formula(batch: tuple) -> None:
    z, y_c, y_r = batch
    pred = z.argmax(dim=1).tolist()
    acc_c = sum(p == y for p, y in zip(pred, y_c.tolist())) / len(pred)
    acc_r = sum(p == y for p, y in zip(pred, y_r.tolist())) / len(pred)
    assert float(cumulative_accuracy(z, y_c, y_r, 0.64)) == pytest.approx(0.64 * acc_c + 0.36 * acc_r)


def test_balanced_softmax_by_hand() -> None:
    # counts (3, 1), z = (0, 0): softmax(z + log N) = (3/4, 1/4); label 1 costs ln 4, label 0 ln 4/3
    log_n = torch.tensor([3.0, 1.0]).log()
    z = torch.zeros(2, 2)
    assert float(balanced_softmax_loss(z, torch.tensor([1, 0]), log_n)) == pytest.approx(
        (math.log(4) + math.log(4 / 3)) / 2, rel=1e-6)
    # counts (1, 3), z = (ln 2, 0): weights 1 * 2 and 3 * 1, p = (2/5, 3/5); label 0 costs ln 5/2
    z = torch.tensor([[math.log(2), 0.0]])
    assert float(balanced_softmax_loss(z, torch.tensor([0]), torch.tensor([1.0, 3.0]).log())) == pytest.approx(
        math.log(5 / 2), rel=1e-6)


def test_logit_adjusted_loss_by_hand() -> None:
    # pi = (3/4, 1/4). tau = 1: p = (3/4, 1/4). tau = 2: weights (9/16, 1/16), p = (9/10, 1/10).
    log_pi = log_class_prior([3, 1])
    assert log_pi.tolist() == pytest.approx([math.log(3 / 4), math.log(1 / 4)])
    z, y = torch.zeros(2, 2), torch.tensor([1, 0])
    assert float(logit_adjusted_loss(z, y, log_pi, 1.0)) == pytest.approx((math.log(4) + math.log(4 / 3)) / 2, rel=1e-6)
    assert float(logit_adjusted_loss(z, y, log_pi, 2.0)) == pytest.approx((math.log(10) + math.log(10 / 9)) / 2, rel=1e-6)
    # tau = 0 is plain CE
    assert float(logit_adjusted_loss(z, y, log_pi, 0.0)) == pytest.approx(math.log(2), rel=1e-6)


def test_balanced_softmax_is_the_logit_adjusted_loss_at_tau_1(batch: tuple) -> None:
    z, y, _ = batch
    counts = [500, 200, 80, 20, 5]
    z = z.clone().requires_grad_(True)
    bs = balanced_softmax_loss(z, y, torch.tensor(counts, dtype=torch.float32).log())
    (g_bs,) = torch.autograd.grad(bs, z)
    la = logit_adjusted_loss(z, y, log_class_prior(counts), 1.0)
    (g_la,) = torch.autograd.grad(la, z)
    assert bs.item() == pytest.approx(la.item(), rel=1e-5)
    assert torch.allclose(g_bs, g_la, atol=1e-6)
    # and both are CE of the shifted logits, computed the long way
    shifted = z.detach().double() + torch.tensor(counts, dtype=torch.float64).log()
    assert bs.item() == pytest.approx(float(ce_by_hand(shifted, y)), rel=1e-5)
    # a class without training images counts as one: the prior stays finite
    assert log_class_prior([3, 0]).tolist() == pytest.approx([math.log(3 / 4), math.log(1 / 4)])
    assert log_class_counts([3, 0]).tolist() == pytest.approx([math.log(3), 0.0])
