"""SGD and the warm-up multi-step learning-rate schedule (SPEC §5)."""

from __future__ import annotations

from bisect import bisect_right

import torch
import torch.nn as nn

from bbn.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum, Nesterov and weight decay on every parameter (as the reference)."""
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0,
    )


def warmup_multistep_factor(epoch: int, warmup_epochs: int, warmup_factor: float,
                            milestones: list[int], gamma: float) -> float:
    """LR factor of the 1-based `epoch`. The reference steps its scheduler at the start of
    each epoch with the epoch number, so epoch e < warmup_epochs uses
    warmup_factor * (1 - e / W) + e / W, and every milestone m <= e multiplies by gamma."""
    warm = 1.0
    if epoch < warmup_epochs:
        progress = epoch / warmup_epochs
        warm = warmup_factor * (1.0 - progress) + progress
    return warm * gamma ** bisect_right(milestones, epoch)


def learning_rate(epoch: int, cfg: TrainConfig) -> float:
    """The learning rate used throughout the 1-based `epoch`."""
    return cfg.lr * warmup_multistep_factor(epoch, cfg.warmup_epochs, cfg.warmup_factor,
                                            cfg.milestones, cfg.gamma)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
