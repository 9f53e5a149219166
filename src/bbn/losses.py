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


def inverse_frequency_weights(counts: torch.Tensor | list[int]) -> torch.Tensor:
    """RW's class weights: w_i proportional to 1 / N_i, scaled so that sum_i w_i = C."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    w = 1.0 / n
    return (w * len(n) / w.sum()).float()


def effective_number_weights(counts: torch.Tensor | list[int], beta: float) -> torch.Tensor:
    """Class-balanced weights (CB-Focal, DRW): w_i proportional to (1 - beta) / (1 - beta^N_i),
    the inverse effective number of samples, scaled so that sum_i w_i = C."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w * len(n) / w.sum()).float()
