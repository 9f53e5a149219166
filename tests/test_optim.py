"""SGD and the warm-up multi-step schedule of the paper's CIFAR recipe (SPEC §5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bbn.config import TrainConfig
from bbn.engine.optim import build_optimizer, learning_rate, set_lr, warmup_multistep_factor


def cifar_recipe() -> TrainConfig:
    return TrainConfig(lr=0.1, warmup_epochs=5, warmup_factor=1.0 / 3.0, milestones=[120, 160],
                       gamma=0.01, momentum=0.9, nesterov=True, weight_decay=2e-4, epochs=200)


def hand_lr(e: int) -> float:
    """SPEC §5: epoch e < 5 uses 0.1 * (1/3 * (1 - e/5) + e/5); x0.01 at 120 and again at 160."""
    if e < 5:
        return 0.1 * (1.0 / 3.0 * (1.0 - e / 5.0) + e / 5.0)
    if e < 120:
        return 0.1
    if e < 160:
        return 0.001
    return 1e-5


def test_every_epoch_of_the_cifar_schedule() -> None:
    cfg = cifar_recipe()
    for e in range(1, 201):
        assert learning_rate(e, cfg) == pytest.approx(hand_lr(e), rel=1e-12, abs=0), e


def test_warmup_values_literally() -> None:
    cfg = cifar_recipe()
    # 1/3 * (1 - e/5) + e/5 = (5 + 2e) / 15
    assert [learning_rate(e, cfg) for e in (1, 2, 3, 4)] == pytest.approx(
        [0.1 * 7 / 15, 0.1 * 9 / 15, 0.1 * 11 / 15, 0.1 * 13 / 15], rel=1e-12)
    # warm-up rises strictly to the base LR, which is reached at epoch 5 (not before)
    lrs = [learning_rate(e, cfg) for e in range(1, 6)]
    assert all(b > a for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(0.1, rel=1e-12)


def test_milestone_boundaries() -> None:
    cfg = cifar_recipe()
    assert learning_rate(119, cfg) == pytest.approx(0.1)
    assert learning_rate(120, cfg) == pytest.approx(1e-3)  # milestone epoch already decayed
    assert learning_rate(159, cfg) == pytest.approx(1e-3)
    assert learning_rate(160, cfg) == pytest.approx(1e-5)
    assert learning_rate(200, cfg) == pytest.approx(1e-5)


def test_factor_without_warmup_and_other_gamma() -> None:
    # no warm-up: factor 1 from epoch 1; gamma 0.1 at 120 and 160 (iNaturalist-like)
    assert warmup_multistep_factor(1, 0, 1 / 3, [120, 160], 0.1) == 1.0
    assert warmup_multistep_factor(120, 0, 1 / 3, [120, 160], 0.1) == pytest.approx(0.1)
    assert warmup_multistep_factor(170, 0, 1 / 3, [120, 160], 0.1) == pytest.approx(0.01)
    # warm-up and milestones combine multiplicatively when a milestone falls in the warm-up
    assert warmup_multistep_factor(2, 5, 0.5, [1], 0.1) == pytest.approx((0.5 * 0.6 + 0.4) * 0.1)
    # no milestones
    assert warmup_multistep_factor(1000, 5, 1 / 3, [], 0.01) == 1.0


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_optimizer_is_nesterov_sgd_of_the_recipe() -> None:
    model = small_model()
    opt = build_optimizer(model, cifar_recipe())
    assert type(opt) is torch.optim.SGD
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert group["lr"] == 0.1
    assert group["momentum"] == 0.9
    assert group["nesterov"] is True
    assert group["weight_decay"] == 2e-4
    # every parameter (BN and biases included, as the reference) is optimised, once
    ids = [id(p) for p in group["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert len(ids) == len(set(ids)) == 6


def test_zero_momentum_turns_nesterov_off() -> None:
    cfg = TrainConfig(momentum=0.0, nesterov=True)
    opt = build_optimizer(small_model(), cfg)  # torch refuses nesterov without momentum
    assert opt.param_groups[0]["nesterov"] is False
    assert opt.param_groups[0]["momentum"] == 0.0


def test_nesterov_false_is_respected() -> None:
    opt = build_optimizer(small_model(), TrainConfig(nesterov=False))
    assert opt.param_groups[0]["nesterov"] is False


def test_one_sgd_step_matches_hand_nesterov_update() -> None:
    # one parameter, gradient g: buf = g; d = g + wd*w (first), nesterov: d = d + m*buf
    w0 = torch.tensor([1.0, -2.0])
    p = nn.Parameter(w0.clone())
    model = nn.Module()
    model.p = p
    opt = build_optimizer(model, TrainConfig(lr=0.1, momentum=0.9, weight_decay=0.01))
    loss = (p * torch.tensor([3.0, 5.0])).sum()
    loss.backward()
    opt.step()
    d = torch.tensor([3.0, 5.0]) + 0.01 * w0
    expected = w0 - 0.1 * (d + 0.9 * d)
    assert torch.allclose(p.detach(), expected, atol=1e-7)


def test_set_lr_sets_every_param_group() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": a.parameters(), "lr": 0.5}, {"params": b.parameters(), "lr": 0.7}],
                          lr=0.1)
    set_lr(opt, 0.0123)
    assert [g["lr"] for g in opt.param_groups] == [0.0123, 0.0123]
    opt2 = build_optimizer(small_model(), cifar_recipe())
    set_lr(opt2, learning_rate(130, cifar_recipe()))
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-3)
