"""Evaluation metrics: top-1, top-5, per-class accuracy, shot groups, sparse confusion,
balanced accuracy, macro-F1, negative log-likelihood, expected calibration error (with its
reliability-diagram bins) and the accuracy under shifted test priors (bbn.engine.shift).

Accuracies, macro-F1 and ECE are in percent; NLL is in nats per test image."""

from __future__ import annotations

import math
from typing import Any

import torch

from bbn.engine.results import sparse_confusion
from bbn.engine.shift import shifted_prior_accuracy

# Shot groups (OLTR / Decoupling convention): many > 100, medium 20..100, few < 20 images.
MANY_SHOT_MIN = 101
FEW_SHOT_MAX = 19
SHOT_GROUPS = ("many", "medium", "few")
# Expected calibration error: equal-width confidence bins (Guo et al., ICML 2017).
ECE_BINS = 15


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
    """`prediction_metrics` of the logits' top-1 and top-5 predictions, plus `nll` and `ece`
    (and `calibration`, the reliability diagram's bins) of their softmax."""
    logits, labels = logits.float().cpu(), labels.cpu()
    out = prediction_metrics(logits.argmax(dim=1), topk_correct(logits, labels, 5), labels, train_counts)
    out.update(probability_metrics(logits, labels))
    return out


def probability_metrics(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict[str, Any]:
    """`nll`: mean cross-entropy of softmax(logits) (natural log; None when not finite).
    `ece`: expected calibration error in percent, sum over bins of |acc - conf| * n_bin / N,
    with the confidence max softmax(logits) in `bins` equal-width bins ((b-1)/B, b/B] (bins
    (0, 1/B] ... ((B-1)/B, 1]). `calibration`: per bin its `count`, `accuracy` and mean
    `confidence` in percent (None for an empty bin), for a reliability diagram."""
    logits, labels = logits.float(), labels.long()
    lse = torch.logsumexp(logits, dim=1).double()
    nll = float((lse - logits.gather(1, labels[:, None])[:, 0].double()).mean()) if len(labels) else float("nan")
    conf = (logits.max(dim=1).values.double() - lse).exp()
    hit = (logits.argmax(dim=1) == labels).double()
    index = (conf * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(index, minlength=bins)
    acc_sum = torch.bincount(index, weights=hit, minlength=bins)
    conf_sum = torch.bincount(index, weights=conf, minlength=bins)
    gap = (acc_sum - conf_sum).abs().sum() / max(len(labels), 1) * 100.0

    def mean(total: torch.Tensor) -> list[float | None]:
        return [None if n == 0 else 100.0 * float(t) / int(n) for t, n in zip(total, count)]

    return {"nll": nll if math.isfinite(nll) else None,
            "ece": float(gap) if len(labels) and math.isfinite(float(gap)) else None,
            "calibration": {"bins": bins, "count": count.tolist(), "accuracy": mean(acc_sum),
                            "confidence": mean(conf_sum)}}


def macro_f1(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float | None:
    """Mean per-class F1 in percent, F1 = 2 TP / (2 TP + FP + FN). A class with neither test
    images nor predictions (0 / 0) is left out of the mean; a class with only one of them has
    F1 = 0 (as scikit-learn's macro average over the labels present). None for no images."""
    pred, labels = pred.long(), labels.long()
    tp = torch.bincount(labels[pred == labels], minlength=num_classes).double()
    denom = torch.bincount(pred, minlength=num_classes) + torch.bincount(labels, minlength=num_classes)
    seen = denom > 0
    if not bool(seen.any()):
        return None
    return float((2.0 * tp[seen] / denom[seen]).mean() * 100.0)


def prediction_metrics(pred: torch.Tensor, top5_hit: torch.Tensor, labels: torch.Tensor,
                       train_counts: list[int]) -> dict[str, Any]:
    """Accuracies in percent from the predicted classes and the top-5 hits. Shot-group
    accuracy is the mean of its classes' accuracies (null when the group has no class, or
    none of its classes is in the test set). Memory is O(N + C): `confusion` holds only the
    nonzero cells (bbn.engine.results.sparse_confusion), never the C x C matrix.
    `balanced_acc` is the mean per-class recall over the classes in the test set; `macro_f1`
    see `macro_f1`; `shifted_priors` see bbn.engine.shift.shifted_prior_accuracy."""
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
    present = per_class[support > 0]
    out["balanced_acc"] = float(present.mean()) if len(present) else None
    out["macro_f1"] = macro_f1(pred, labels, num_classes)
    out["shifted_priors"] = shifted_prior_accuracy(out["per_class"], train_counts)
    out["confusion"] = sparse_confusion(pred, labels, num_classes)
    return out


def percent(value: float | None) -> str:
    """An accuracy as `12.34%`, or `n/a` for None / NaN (an empty group or class)."""
    if value is None or math.isnan(float(value)):
        return "n/a"
    return f"{float(value):.2f}%"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The lines every command prints: top-1 / top-5 / error, then many / medium / few, then
    (when the result has any) balanced accuracy / macro-F1 / NLL / ECE, absent ones skipped."""
    lines = [f"top-1 {percent(result['top1'])}   top-5 {percent(result['top5'])}   error {percent(result['error'])}",
             f"many {percent(result['many'])}   medium {percent(result['medium'])}   few {percent(result['few'])}"]
    extra = [f"{label} {show(result[key])}" for key, label, show in (
        ("balanced_acc", "balanced", percent), ("macro_f1", "macro-F1", percent),
        ("nll", "NLL", lambda v: f"{float(v):.3f}"), ("ece", "ECE", percent)) if result.get(key) is not None]
    return lines + (["   ".join(extra)] if extra else [])
