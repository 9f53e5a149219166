"""Losses. Each equation lives here once."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cumulative_loss(z: torch.Tensor, y_c: torch.Tensor, y_r: torch.Tensor, alpha: float) -> torch.Tensor:
    """L = alpha * E(p, y_c) + (1 - alpha) * E(p, y_r), p = softmax(z) (SPEC §1, Algorithm 1)."""
    return alpha * F.cross_entropy(z, y_c) + (1.0 - alpha) * F.cross_entropy(z, y_r)


def cumulative_accuracy(z: torch.Tensor, y_c: torch.Tensor, y_r: torch.Tensor, alpha: float) -> torch.Tensor:
    """Shown training accuracy: alpha * acc(y_c) + (1 - alpha) * acc(y_r) (SPEC §2)."""
    pred = z.argmax(dim=1)
    return alpha * (pred == y_c).float().mean() + (1.0 - alpha) * (pred == y_r).float().mean()
