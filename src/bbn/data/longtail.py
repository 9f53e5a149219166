"""Long-tailed subsets (SPEC §4): exp / step profiles and class counts (their shot groups:
bbn.engine.metrics)."""

from __future__ import annotations

import numpy as np
import torch

from bbn.data.sources import LabeledImages, shuffled_per_class
from bbn.errors import BBNError


def longtail_counts(n_max: float, num_classes: int, imbalance_ratio: float, profile: str) -> list[int]:
    """n_i per class (the rule shared with LDAM-DRW and BBN).

    exp:  n_i = int(n_max * (1/IR)^(i/(C-1)));  step: first half n_max, second half
    n_max/IR;  none: n_max for every class.
    """
    if imbalance_ratio < 1:
        raise BBNError(f"imbalance ratio must be >= 1, got {imbalance_ratio}")
    imb_factor = 1.0 / imbalance_ratio
    if profile == "exp":
        if num_classes == 1:
            return [int(n_max)]
        return [int(n_max * imb_factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    if profile == "step":
        half = num_classes // 2
        return [int(n_max)] * half + [int(n_max * imb_factor)] * (num_classes - half)
    if profile == "none":
        return [int(n_max)] * num_classes
    raise BBNError(f"unknown long-tail profile '{profile}'; known: exp, step, none")


def make_longtail(data: LabeledImages, imbalance_ratio: float, profile: str, seed: int,
                  n_max: int | None = None) -> LabeledImages:
    """Keep the first n_i images of each class after a seeded per-class shuffle.

    n_max defaults to the size of the smallest class (CIFAR: 5,000 / 500, as len(data)/C
    in the reference); a smaller `n_max` gives a smaller set with the same profile. The
    shuffle uses NumPy's legacy RandomState(seed) class by class, which is the reference's
    sequence, so seed 0 gives the reference's subset.
    """
    counts = data.class_counts()
    if min(counts) == 0:
        empty = counts.index(0)
        raise BBNError(
            f"class {empty} ('{data.class_names[empty]}') has no images in the source "
            f"({counts.count(0)} empty class(es)); every class needs at least one: fix the labels or "
            "remove the class"
        )
    if n_max is not None and n_max > min(counts):
        raise BBNError(f"data.n_max={n_max} exceeds the smallest source class ({min(counts)} images); "
                       f"use at most {min(counts)} or leave it unset")
    n_max = min(counts) if n_max is None else n_max
    wanted = longtail_counts(n_max, data.num_classes, imbalance_ratio, profile)
    order = shuffled_per_class(data.labels.numpy(), data.num_classes, seed)
    keep = [idx[:n_c] for idx, n_c in zip(order, wanted)]
    return data.subset(torch.from_numpy(np.concatenate(keep)))


def first_per_class(data: LabeledImages, k: int) -> LabeledImages:
    """The first `k` images of each class, in the source's order (a smaller test set)."""
    keep = [torch.nonzero(data.labels == c).flatten()[:k] for c in range(data.num_classes)]
    return data.subset(torch.sort(torch.cat(keep)).values)


def check_trainable(counts: list[int], class_names: list[str]) -> None:
    """Every class must have a training image: the reversed sampler's w_i = N_max / N_i
    divides by N_i, and a class the model never sees cannot be learned. We refuse rather
    than silently give the class zero probability."""
    if len(counts) < 2:
        raise BBNError(f"the training set has a single class ('{class_names[0]}'); long-tailed "
                       "classification needs at least 2 classes, check the labels and class names")
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        c = empty[0]
        raise BBNError(
            f"class {c} ('{class_names[c]}') has no training images ({len(empty)} empty class(es)); "
            "the reversed sampler needs N_i >= 1 (w_i = N_max/N_i): lower data.imbalance_ratio "
            "or remove the class"
        )


def hold_out(data: LabeledImages, k: int, seed: int) -> tuple[LabeledImages, LabeledImages]:
    """(the rest, the validation split): `k` images of every class, drawn without
    replacement in a seeded per-class order, held out of a training set. Every class keeps
    at least one training image; a class too small is a BBNError naming the largest k."""
    counts = data.class_counts()
    smallest = min(range(len(counts)), key=lambda c: (counts[c], c))
    if counts[smallest] <= k:
        most = counts[smallest] - 1
        fix = f"use data.val_per_class={most} or less" if most else "set data.val_per_class=0 (no validation split)"
        raise BBNError(f"data.val_per_class={k} leaves class {smallest} ('{data.class_names[smallest]}') without a training "
                       f"image (it has {counts[smallest]}); {fix}, or raise data.n_max / lower data.imbalance_ratio")
    order = shuffled_per_class(data.labels.numpy(), len(counts), seed)
    held = np.sort(np.concatenate([idx[:k] for idx in order]))
    rest = np.setdiff1d(np.arange(len(data)), held)
    return data.subset(torch.from_numpy(rest)), data.subset(torch.from_numpy(held))
