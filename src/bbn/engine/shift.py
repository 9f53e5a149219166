"""Accuracy under shifted test priors, without retraining: the test-agnostic long-tail
evaluation protocol (SADE, Zhang et al., NeurIPS 2022) computed from per-class accuracies.

Classes are ranked by training count (descending, ties by class id): rank r = 0 is the head,
C - 1 the tail. A forward long-tailed test set of imbalance ratio R has class priors
p_i proportional to R^(-r_i / (C - 1)) (same order as training); a backward one reverses it,
p_i proportional to R^(-(C - 1 - r_i) / (C - 1)); uniform has p_i = 1 / C. The accuracy under
a prior is sum_i p_i * acc_i over the classes with a test accuracy, the priors renormalised
over them (a class absent from the test set has no accuracy to weigh)."""

from __future__ import annotations

SHIFT_RATIOS = (50, 25, 10, 5, 2)


def prior_keys(ratios: tuple[float, ...] = SHIFT_RATIOS) -> list[str]:
    """forward50 ... forward2, uniform, backward2 ... backward50 (head-heavy to tail-heavy)."""
    return ([f"forward{r:g}" for r in ratios] + ["uniform"]
            + [f"backward{r:g}" for r in reversed(ratios)])


def shift_priors(train_counts: list[int], ratio: float, backward: bool = False) -> list[float]:
    """Unnormalised test prior of each class (by class id) for one imbalance ratio."""
    c = len(train_counts)
    order = sorted(range(c), key=lambda i: (-train_counts[i], i))
    prior = [0.0] * c
    for rank, cls in enumerate(order):
        step = (c - 1 - rank) if backward else rank
        prior[cls] = float(ratio) ** (-step / (c - 1)) if c > 1 else 1.0
    return prior


def shifted_prior_accuracy(per_class: list[float | None], train_counts: list[int],
                           ratios: tuple[float, ...] = SHIFT_RATIOS) -> dict[str, float | None] | None:
    """{"forward50": ..., "uniform": ..., "backward50": ...}: the accuracy (percent) a test set
    with each prior would give; None when no class has a test accuracy."""
    have = [i for i, a in enumerate(per_class) if a is not None]
    if not have:
        return None

    def weighted(prior: list[float]) -> float:
        total = sum(prior[i] for i in have)
        return sum(prior[i] * float(per_class[i]) for i in have) / total

    out: dict[str, float | None] = {f"forward{r:g}": weighted(shift_priors(train_counts, r)) for r in ratios}
    out["uniform"] = weighted([1.0] * len(per_class))
    out.update({f"backward{r:g}": weighted(shift_priors(train_counts, r, backward=True)) for r in reversed(ratios)})
    return out
