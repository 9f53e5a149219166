"""The paper's analyses of a trained model (SPEC §7). Figure 5: the per-class L2 norm of
the classifier's weight vectors, classes sorted head to tail, for plain models (CE, RW,
RS) and for BBN's W_c (BBN-CB), W_r (BBN-RB) and [W_c; W_r] (BBN-ALL)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from bbn.errors import BBNError
from bbn.tools.figures import save_png
from bbn.models.bilateral import BilateralModel

_MAX_MARKERS = 50


class RunNorms(NamedTuple):
    """One run's weight norms (key -> per-class norms) and its training class counts."""

    label: str
    norms: dict[str, list[float]]
    class_counts: Sequence[int]


def _row_norms(weight: torch.Tensor) -> list[float]:
    return torch.linalg.vector_norm(weight.detach().double(), dim=1).tolist()


@torch.no_grad()
def classifier_weight_norms(model: nn.Module) -> dict[str, list[float]]:
    """Per-class L2 norm of the classifier's weight rows (Figure 5).

    A BilateralModel gives {"BBN-CB": ||W_c[i]||, "BBN-RB": ||W_r[i]||,
    "BBN-ALL": ||[W_c[i]; W_r[i]]||}; any other model's `classifier` (C x D weight) gives
    {"all": ||W[i]||}.
    """
    if isinstance(model, BilateralModel):
        W_c, W_r = model.W_c, model.W_r  # noqa: N806 - paper names
        return {"BBN-CB": _row_norms(W_c), "BBN-RB": _row_norms(W_r),
                "BBN-ALL": _row_norms(torch.cat((W_c, W_r), dim=1))}
    weight = getattr(getattr(model, "classifier", None), "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise BBNError(f"{type(model).__name__} has no linear `classifier` (C x D weight) to measure; "
                       "use a model built by bbn.models.create_model")
    return {"all": _row_norms(weight)}


def norm_stats(norms: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation of one norm curve: the flatness of Figure 5."""
    values = np.asarray(norms, dtype=float)
    return float(values.mean()), float(values.std())


def head_to_tail(class_counts: Sequence[int]) -> np.ndarray:
    """Class ids sorted by training images, largest first (stable for ties)."""
    return np.argsort(-np.asarray(class_counts, dtype=np.int64), kind="stable")


def _curve_name(label: str, key: str) -> str:
    return f"{label} {key}" if label else key


def plot_weight_norms(path: str | Path, runs: Sequence[RunNorms]) -> Path:
    """Norm vs class rank (head to tail), one line per (run label, key), std in the legend."""
    if not runs:
        raise BBNError("no runs to plot; pass at least one run folder")
    path = Path(path)
    n_max = max(len(r.class_counts) for r in runs)
    fig = Figure(figsize=(max(7.0, min(14.0, 0.3 * n_max)), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for run in runs:
        order = head_to_tail(run.class_counts)
        for key, norms in run.norms.items():
            if len(norms) != len(order):
                raise BBNError(f"run '{run.label}': {len(norms)} {key} norms for {len(order)} classes; "
                               "the checkpoint and its data disagree")
            _, std = norm_stats(norms)
            ax.plot(np.arange(len(order)), np.asarray(norms)[order],
                    marker="o" if len(order) <= _MAX_MARKERS else None, markersize=3,
                    label=f"{_curve_name(run.label, key)} (std {std:.3f})")
    ax.set_xlabel("class rank by training images (0 = head)")
    ax.set_ylabel("L2 norm of classifier weights")
    ax.set_title("Classifier weight norms per class (head → tail)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def weight_norm_table(runs: Sequence[RunNorms]) -> str:
    """Markdown table: label, key, mean norm, std (one row per curve)."""
    lines = ["| label | key | mean norm | std |", "|---|---|---:|---:|"]
    for run in runs:
        for key, norms in run.norms.items():
            mean, std = norm_stats(norms)
            label = run.label.replace("|", "\\|") or "-"
            lines.append(f"| {label} | {key} | {mean:.4f} | {std:.4f} |")
    return "\n".join(lines) + "\n"


def weight_norm_paths(out: str | Path) -> tuple[Path, Path]:
    """(plot, table) paths: `out` must be a .png; the table goes beside it as .md."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise BBNError(f"--out '{out}' must name a .png file; the table is written beside it as .md")
    return out, out.with_suffix(".md")


def write_weight_norms(out: str | Path, runs: Sequence[RunNorms]) -> str:
    """Write the plot to `out` (a .png) and the table beside it (same name, .md); return the table."""
    png, md = weight_norm_paths(out)
    table = weight_norm_table(runs)
    try:
        png.parent.mkdir(parents=True, exist_ok=True)
        plot_weight_norms(png, runs)
        md.write_text(table, encoding="utf-8")
    except OSError as exc:
        raise BBNError(f"cannot write '{out}' ({exc.strerror or exc}); choose a writable --out") from None
    return table
