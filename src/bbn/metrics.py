"""Evaluation metrics: top-1, top-5, per-class accuracy, shot groups, confusion matrix."""

from __future__ import annotations

import math
from typing import Any

import torch

from bbn.data.longtail import SHOT_GROUPS, shot_groups


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean per sample: the label is among the k highest logits."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C x C counts, rows = true class, columns = predicted class."""
    flat = labels.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor,
                           train_counts: list[int]) -> dict[str, Any]:
    """Accuracies in percent. Shot-group accuracy is the mean of its classes' accuracies
    (null when the group has no class, or none of its classes is in the test set)."""
    logits, labels = logits.float().cpu(), labels.cpu()
    num_classes = len(train_counts)
    pred = logits.argmax(dim=1)
    conf = confusion_matrix(pred, labels, num_classes)
    support = conf.sum(dim=1)
    per_class = torch.where(support > 0, conf.diag().double() / support.clamp_min(1) * 100.0,
                            torch.full((num_classes,), float("nan"), dtype=torch.float64))
    groups = shot_groups(train_counts)
    out: dict[str, Any] = {
        "top1": float((pred == labels).double().mean() * 100.0),
        "top5": float(topk_correct(logits, labels, 5).double().mean() * 100.0),
    }
    out["error"] = 100.0 - out["top1"]
    for g in SHOT_GROUPS:
        vals = per_class[groups[g]] if groups[g] else torch.empty(0, dtype=torch.float64)
        vals = vals[~vals.isnan()]
        out[g] = float(vals.mean()) if len(vals) else None
    out["per_class"] = [None if v != v else float(v) for v in per_class.tolist()]
    out["confusion"] = conf.tolist()
    return out


def percent(value: float | None) -> str:
    """An accuracy as `12.34%`, or `n/a` for None / NaN (an empty group or class)."""
    if value is None or math.isnan(float(value)):
        return "n/a"
    return f"{float(value):.2f}%"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The two lines every command prints: top-1 / top-5 / error, then many / medium / few."""
    return [f"top-1 {percent(result['top1'])}   top-5 {percent(result['top5'])}   error {percent(result['error'])}",
            f"many {percent(result['many'])}   medium {percent(result['medium'])}   few {percent(result['few'])}"]
