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


def mixup_loss(z: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float) -> torch.Tensor:
    """Mixup's L = lam * CE(z, y_a) + (1 - lam) * CE(z, y_b) for an input (or hidden state)
    mixed as lam * a + (1 - lam) * b (SPEC §6). The formula is BBN's cumulative loss with
    lam for alpha, so it is computed by `cumulative_loss`, not written twice."""
    return cumulative_loss(z, y_a, y_b, lam)


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


def weighted_cross_entropy(z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Class-weighted CE (RW, DRW): L = sum_k w_{y_k} CE(z_k, y_k) / sum_k w_{y_k}, the
    weighted mean of the reference's `CrossEntropyLoss(weight=w)`; weights None = plain CE."""
    return F.cross_entropy(z, y, weight=None if weights is None else weights.to(z))


def focal_terms(z: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample focal loss FL_k = -(1 - p_t)^gamma log p_t, p_t = softmax(z_k)[y_k]
    (gamma = 0 is CE)."""
    log_pt = torch.log_softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
    return -torch.pow(-torch.expm1(log_pt), gamma) * log_pt


def focal_loss(z: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Focal loss: the batch mean of `focal_terms`."""
    return focal_terms(z, y, gamma).mean()


def class_balanced_focal_loss(z: torch.Tensor, y: torch.Tensor, gamma: float,
                              weights: torch.Tensor) -> torch.Tensor:
    """CB-Focal: L = mean_k w_{y_k} FL_k with w the effective-number class weights."""
    return (weights.to(z)[y] * focal_terms(z, y, gamma)).mean()


def ldam_margins(counts: torch.Tensor | list[int], max_margin: float) -> torch.Tensor:
    """LDAM's class margins m_i = C / N_i^(1/4), with C such that max_i m_i = max_margin."""
    m = torch.as_tensor(counts, dtype=torch.float64).pow(-0.25)
    return (m * (max_margin / m.max())).float()


def ldam_loss(z: torch.Tensor, y: torch.Tensor, margins: torch.Tensor, scale: float,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    """LDAM: the true-class logit lowered by its margin, z_y - m_y, then the class-weighted CE
    of s * z (s = `scale`; the logits are cosines, so s sets the softmax's temperature)."""
    shift = F.one_hot(y, z.shape[1]).to(z) * margins.to(z)[y][:, None]
    return weighted_cross_entropy(scale * (z - shift), y, weights)


def log_class_counts(counts: torch.Tensor | list[int]) -> torch.Tensor:
    """log N_i of the training class counts (a class with no image counts as one, so every
    entry is finite)."""
    return torch.as_tensor(counts, dtype=torch.float64).clamp_min(1.0).log().float()


def log_class_prior(counts: torch.Tensor | list[int]) -> torch.Tensor:
    """log pi_i = log(N_i / sum_j N_j), the training class prior (N_i as in `log_class_counts`)."""
    log_n = log_class_counts(counts).double()
    return (log_n - torch.logsumexp(log_n, dim=0)).float()


def logit_adjusted_loss(z: torch.Tensor, y: torch.Tensor, log_prior: torch.Tensor, tau: float) -> torch.Tensor:
    """Logit-adjusted loss (Menon et al., ICLR 2021): CE(z + tau * log pi, y), pi the training
    class prior (`log_class_prior`). Only training is adjusted; inference is argmax z."""
    return F.cross_entropy(z + tau * log_prior.to(z), y)


def balanced_softmax_loss(z: torch.Tensor, y: torch.Tensor, log_counts: torch.Tensor) -> torch.Tensor:
    """Balanced Softmax (Ren et al., NeurIPS 2020): CE(z + log N, y), N the training class
    counts, i.e. softmax N_j exp(z_j) / sum_k N_k exp(z_k). The same loss as
    `logit_adjusted_loss` at tau = 1: log N and log pi differ by log sum N, the same for every
    class, and softmax ignores a constant added to every logit."""
    return F.cross_entropy(z + log_counts.to(z), y)
