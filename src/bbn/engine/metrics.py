"""Evaluation metrics: top-1, top-5, per-class accuracy, shot groups, sparse confusion."""

from __future__ import annotations

import math
from typing import Any

import torch

from bbn.engine.results import sparse_confusion

# Shot groups (OLTR / Decoupling convention): many > 100, medium 20..100, few < 20 images.
MANY_SHOT_MIN = 101
FEW_SHOT_MAX = 19
SHOT_GROUPS = ("many", "medium", "few")


def shot_group(count: int) -> str:
    """'many' (> 100 training images), 'medium' (20..100) or 'few' (< 20)."""
    if count >= MANY_SHOT_MIN:
        return "many"
    if count <= FEW_SHOT_MAX:
        return "few"
    return "medium"


def shot_groups(counts: list[int]) -> dict[str, list[int]]:
    """Class ids of each shot group, from training class counts."""
    groups: dict[str, list[int]] = {g: [] for g in SHOT_GROUPS}
    for c, n in enumerate(counts):
        groups[shot_group(n)].append(c)
    return groups


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean per sample: the label is among the k highest logits."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor,
                           train_counts: list[int]) -> dict[str, Any]:
    """`prediction_metrics` of the logits' top-1 and top-5 predictions."""
    logits, labels = logits.float().cpu(), labels.cpu()
    return prediction_metrics(logits.argmax(dim=1), topk_correct(logits, labels, 5), labels, train_counts)


def prediction_metrics(pred: torch.Tensor, top5_hit: torch.Tensor, labels: torch.Tensor,
                       train_counts: list[int]) -> dict[str, Any]:
    """Accuracies in percent from the predicted classes and the top-5 hits. Shot-group
    accuracy is the mean of its classes' accuracies (null when the group has no class, or
    none of its classes is in the test set). Memory is O(N + C): `confusion` holds only the
    nonzero cells (bbn.engine.results.sparse_confusion), never the C x C matrix."""
    num_classes = len(train_counts)
    pred, labels = pred.long().cpu(), labels.long().cpu()
    hit = pred == labels
    support = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(labels[hit], minlength=num_classes)
    per_class = torch.where(support > 0, correct.double() / support.clamp_min(1) * 100.0,
                            torch.full((num_classes,), float("nan"), dtype=torch.float64))
    groups = shot_groups(train_counts)
    out: dict[str, Any] = {
        "top1": float(hit.double().mean() * 100.0),
        "top5": float(top5_hit.cpu().double().mean() * 100.0),
    }
    out["error"] = 100.0 - out["top1"]
    for g in SHOT_GROUPS:
        vals = per_class[groups[g]] if groups[g] else torch.empty(0, dtype=torch.float64)
        vals = vals[~vals.isnan()]
        out[g] = float(vals.mean()) if len(vals) else None
    out["per_class"] = [None if v != v else float(v) for v in per_class.tolist()]
    out["confusion"] = sparse_confusion(pred, labels, num_classes)
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
