"""The paper's published numbers (SPEC §6), for tables that put ours beside them."""

from __future__ import annotations

# Method registry name -> the row label of the paper's Table 1.
METHOD_LABELS: dict[str, str] = {
    "ce": "CE",
    "rw": "RW",
    "rs": "RS",
    "focal": "Focal",
    "mixup": "Mixup",
    "manifold_mixup": "Manifold Mixup",
    "manifold_mixup_two": "Manifold Mixup (two samplers)",
    "ce_drw": "CE-DRW",
    "ce_drs": "CE-DRS",
    "cb_focal": "CB-Focal",
    "ldam_drw": "LDAM-DRW",
    "bbn": "BBN",
    # baselines after the paper (no Table 1 number)
    "balanced_softmax": "Balanced Softmax",
    "logit_adjusted": "Logit adjustment",
}

# Top-1 error % of ResNet-32 on the long-tailed CIFAR sets, columns
# (dataset, imbalance ratio): the paper's Table 1.
_COLUMNS = (("cifar10", 100), ("cifar10", 50), ("cifar10", 10),
            ("cifar100", 100), ("cifar100", 50), ("cifar100", 10))
_TABLE1 = {
    "ce": (29.64, 25.19, 13.61, 61.68, 56.15, 44.29),
    "focal": (29.62, 23.28, 13.34, 61.59, 55.68, 44.22),
    "mixup": (26.94, 22.18, 12.90, 60.46, 55.01, 41.98),
    "manifold_mixup": (27.04, 22.05, 12.97, 61.75, 56.91, 43.45),
    "manifold_mixup_two": (26.90, 20.79, 13.17, 63.19, 57.95, 43.54),
    "ce_drw": (23.66, 20.03, 12.44, 58.49, 54.71, 41.88),
    "ce_drs": (24.39, 20.19, 12.62, 58.39, 54.52, 41.89),
    "cb_focal": (25.43, 20.73, 12.90, 60.40, 54.83, 42.01),
    "ldam_drw": (22.97, 18.97, 11.84, 57.96, 53.38, 41.29),
    "bbn": (20.18, 17.82, 11.68, 57.44, 52.98, 40.88),
}
PAPER_TOP1_ERROR: dict[tuple[str, str, float], float] = {
    (method, source, float(ir)): err
    for method, row in _TABLE1.items()
    for (source, ir), err in zip(_COLUMNS, row)
}


def paper_error(method: str, source: str, imbalance_ratio: float) -> float | None:
    """The paper's top-1 error % for a method on CIFAR-LT, or None where it has none."""
    return PAPER_TOP1_ERROR.get((method, source, float(imbalance_ratio)))


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)
