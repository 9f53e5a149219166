"""End-of-run report: `report.md` plus per-class, training-curve, confusion and reliability PNGs.

Every file is written atomically (a temporary file renamed over it), so a failed write
(a full disk) keeps the old file rather than leaving an empty or partial one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from bbn.tools.analysis import RunNorms, plot_weight_norms, weight_norm_table
from bbn.engine.metrics import FEW_SHOT_MAX, MANY_SHOT_MIN, SHOT_GROUPS, shot_group
from bbn.errors import BBNError
from bbn.tools.figures import save_png, write_text_file
from bbn.engine.metrics import percent
from bbn.engine.shift import prior_keys
from bbn.engine.results import confusion_cells, dense_confusion

_GROUP_COLOURS = {"many": "#4c72b0", "medium": "#dd8452", "few": "#c44e52"}
_GROUP_RULES = {"many": f">{MANY_SHOT_MIN - 1} imgs", "few": f"<{FEW_SHOT_MAX + 1} imgs",
                "medium": f"{FEW_SHOT_MAX + 1}-{MANY_SHOT_MIN - 1} imgs"}
_BRANCH_LOGITS = {"BBN-CB": "W_c f_c + b", "BBN-RB": "W_r f_r + b"}
_MAX_TICKS = 30
_TABLE_EDGE = 10
_TOP_PAIRS = 20


def _duration(seconds: float) -> str:
    """Seconds as `1h 02m 03s` / `2m 03.0s` / `3.2s`."""
    s = float(seconds)
    if s >= 3600:
        return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m {int(s % 60):02d}s"
    if s >= 60:
        return f"{int(s // 60)}m {s % 60:04.1f}s"
    return f"{s:.1f}s"


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _plot_per_class(path: Path, acc: np.ndarray, counts: np.ndarray,
                    order: np.ndarray, names: list[str] | None) -> None:
    """Accuracy bars and class-size line, classes sorted head to tail, groups shaded."""
    n = len(order)
    x = np.arange(n)
    groups = [shot_group(int(counts[i])) for i in order]
    width = max(7.0, min(16.0, 0.35 * n))
    ncol = 4 if width >= 10 else 2
    fig = Figure(figsize=(width, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(x, np.nan_to_num(acc[order]), color=[_GROUP_COLOURS[g] for g in groups],
           width=0.8 if n <= 200 else 1.0, zorder=2)
    handles = []
    for g in SHOT_GROUPS:
        idx = [i for i, gg in enumerate(groups) if gg == g]
        if not idx:
            continue
        ax.axvspan(min(idx) - 0.5, max(idx) + 0.5, color=_GROUP_COLOURS[g], alpha=0.08, zorder=0)
        handles.append(Patch(color=_GROUP_COLOURS[g],
                             label=f"{g} ({_GROUP_RULES[g]}, {len(idx)} cls)"))
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, 125 if ncol == 4 else 140)  # headroom above 100% for the legend
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Per-class test accuracy vs training class size (head → tail)")
    if n <= _MAX_TICKS:
        labels = [names[i] if names else str(i) for i in order]
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=60 if n > 10 else 0, ha="right" if n > 10 else "center",
                           fontsize=8)
        ax.set_xlabel("class (sorted by training images, head → tail)")
    else:
        ax.set_xlabel(f"class rank by training images (0 = head, {n - 1} = tail)")
    ax2 = ax.twinx()
    sizes = counts[order].astype(float)
    (line,) = ax2.plot(x, sizes, color="black", marker="o" if n <= 50 else None,
                       markersize=3, linewidth=1.2, label="training images")
    if sizes.min() > 0 and sizes.max() / sizes.min() >= 10:
        ax2.set_yscale("log")
    ax2.set_ylabel("training images per class" + (" (log)" if ax2.get_yscale() == "log" else ""))
    ax2.legend(handles=handles + [line], loc="upper center", ncol=ncol, fontsize=8, framealpha=0.95)
    if ax2.get_yscale() == "log":
        ax2.set_ylim(sizes.min() / 1.5, sizes.max() * 4)
    else:
        ax2.set_ylim(0, sizes.max() * 1.3)
    save_png(fig, path)


def _plot_curves(path: Path, history: list[dict]) -> None:
    """Loss, accuracy and (when present) alpha / lr against epoch."""
    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        return [p[0] for p in pts], [float(p[1]) for p in pts]

    has_sched = any(h.get("alpha") is not None or h.get("lr") is not None for h in history)
    rows = 3 if has_sched else 2
    fig = Figure(figsize=(8, 2.8 * rows))
    ax_loss = fig.add_subplot(rows, 1, 1)
    ax_loss.plot(*series("train_loss"), marker=".", color="#4c72b0")
    ax_loss.set_ylabel("train loss")
    ax_loss.set_title("Training curves")
    ax_acc = fig.add_subplot(rows, 1, 2, sharex=ax_loss)
    ax_acc.plot(*series("train_acc"), marker=".", label="train acc")
    ax_acc.plot(*series("val_top1"), marker="o", label="val top-1 (evaluated epochs)")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend(fontsize=8)
    ax_last = ax_acc
    if has_sched:
        ax_s = fig.add_subplot(rows, 1, 3, sharex=ax_loss)
        ex, alpha = series("alpha")
        if alpha:
            ax_s.plot(ex, alpha, color="#55a868", label="alpha (conventional weight)")
        ax_s.set_ylabel("alpha")
        ax_s.set_ylim(-0.05, 1.05)
        lx, lr = series("lr")
        handles = ax_s.get_lines()
        if lr:
            ax_lr = ax_s.twinx()
            handles = handles + ax_lr.plot(lx, lr, color="#8172b2", linestyle="--",
                                           drawstyle="steps-post", label="lr")
            if min(lr) > 0 and max(lr) / min(lr) >= 10:
                ax_lr.set_yscale("log")
            ax_lr.set_ylabel("learning rate")
        ax_s.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize=8)
        ax_last = ax_s
    ax_last.set_xlabel("epoch")
    ax_last.xaxis.set_major_locator(MaxNLocator(integer=True))
    for a in (ax_loss, ax_acc, ax_last):
        a.grid(alpha=0.3)
    save_png(fig, path)


def _plot_confusion(path: Path, confusion: np.ndarray, names: list[str] | None) -> None:
    """Row-normalised confusion matrix (rows = true class) with a colorbar (up to 30 classes)."""
    c = confusion.shape[0]
    totals = confusion.sum(axis=1, keepdims=True)
    norm = np.divide(confusion, totals, out=np.zeros_like(confusion, dtype=float), where=totals > 0)
    side = max(5.0, min(12.0, 0.3 * c + 3))
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    labels = names if names else [str(i) for i in range(c)]
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (row-normalised)")
    save_png(fig, path)


def _plot_reliability(path: Path, calibration: dict[str, Any], ece: float | None) -> None:
    """Reliability diagram: accuracy per equal-width confidence bin against the diagonal (a
    calibrated model), the gap to each bin's mean confidence shaded; test images per bin below."""
    bins = int(calibration["bins"])
    edges = np.linspace(0.0, 100.0, bins + 1)
    width = 100.0 / bins
    centre = edges[:-1] + width / 2
    acc = np.array([np.nan if a is None else a for a in calibration["accuracy"]], dtype=float)
    conf = np.array([np.nan if c is None else c for c in calibration["confidence"]], dtype=float)
    fig = Figure(figsize=(6, 7))
    grid = fig.add_gridspec(4, 1)
    ax = fig.add_subplot(grid[:3])
    ax.bar(centre, np.nan_to_num(acc), width=width, color="#4c72b0", edgecolor="black", label="accuracy")
    have = ~np.isnan(acc)
    ax.bar(centre[have], (conf - acc)[have], bottom=acc[have], width=width, color="#c44e52", alpha=0.35,
           edgecolor="#c44e52", hatch="//", label="gap to mean confidence")
    ax.plot([0, 100], [0, 100], "--", color="gray", label="calibrated")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Reliability diagram ({bins} bins, ECE {percent(ece)})")
    ax.legend(loc="upper left", fontsize=8)
    ax2 = fig.add_subplot(grid[3], sharex=ax)
    ax2.bar(centre, calibration["count"], width=width, color="#8172b2", edgecolor="black")
    ax2.set_xlabel("confidence: max softmax probability (%)")
    ax2.set_ylabel("test images")
    save_png(fig, path)


def _metric_rows(final: dict) -> list[str]:
    """Table rows of the class-balanced and probabilistic metrics the result has."""
    rows = [("balanced_acc", "balanced accuracy (mean per-class recall), last epoch", percent),
            ("macro_f1", "macro-F1, last epoch", percent),
            ("nll", "NLL (mean cross-entropy, nats), last epoch", lambda v: f"{float(v):.4f}"),
            ("ece", "ECE (15 bins), last epoch", percent)]
    return [f"| {label} | {show(final[key])} |" for key, label, show in rows if final.get(key) is not None]


def _shift_rows(shifted: dict[str, float | None]) -> list[str]:
    """The shifted-prior accuracies as one table, head-heavy to tail-heavy."""
    keys = [k for k in prior_keys() if k in shifted] + [k for k in shifted if k not in prior_keys()]
    return ["Accuracy a test set with long-tailed class priors would give, from the per-class "
            "accuracies (forward: head classes frequent, as in training; backward: reversed; "
            "the number is the imbalance ratio; see bbn.engine.shift).", "",
            "| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys),
            "| " + " | ".join(percent(shifted[k]) for k in keys) + " |", ""]


def most_confused(cells: np.ndarray, k: int) -> np.ndarray:
    """The k off-diagonal [true, pred, count] cells with the most test images (ties: by
    true class, then predicted class)."""
    off = cells[cells[:, 0] != cells[:, 1]]
    return off[np.lexsort((off[:, 1], off[:, 0], -off[:, 2]))][:k]


def _confused_rows(cells: np.ndarray, names: list[str] | None) -> list[str]:
    """Markdown table of the most confused pairs (the plot's top 10)."""
    support = np.bincount(cells[:, 0], weights=cells[:, 2])
    lines = ["| true class | predicted class | test images | of the true class |", "|---|---|---:|---:|"]
    for t, p, n in most_confused(cells, _TABLE_EDGE):
        lines.append(f"| {_cell(names[t]) if names else t} | {_cell(names[p]) if names else p} | {n} | "
                     f"{100.0 * n / support[t]:.1f}% |")
    return lines + [""]


def _plot_confusion_summary(path: Path, cells: np.ndarray, counts: np.ndarray,
                            names: list[str] | None) -> None:
    """Many classes: the confusion between shot groups (row-normalised 3 x 3) and the most
    confused (true -> predicted) class pairs, from the nonzero cells alone."""
    group_of = np.array([SHOT_GROUPS.index(shot_group(int(k))) for k in counts])
    g = len(SHOT_GROUPS)
    groups = np.zeros((g, g))
    np.add.at(groups, (group_of[cells[:, 0]], group_of[cells[:, 1]]), cells[:, 2])
    totals = groups.sum(axis=1, keepdims=True)
    groups = np.divide(groups, totals, out=np.zeros_like(groups), where=totals > 0)
    support = np.bincount(cells[:, 0], weights=cells[:, 2], minlength=len(counts))
    top, off = most_confused(cells, _TOP_PAIRS), int((cells[:, 0] != cells[:, 1]).sum())

    fig = Figure(figsize=(14, 6))
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(groups, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(g):
        for j in range(g):
            ax.text(j, i, "n/a" if totals[i, 0] == 0 else f"{groups[i, j]:.2f}", ha="center", va="center",
                    color="white" if groups[i, j] > 0.5 else "black")
    ax.set_xticks(range(g))
    ax.set_yticks(range(g))
    ax.set_xticklabels(SHOT_GROUPS)
    ax.set_yticklabels(SHOT_GROUPS)
    ax.set_xlabel("predicted class's group")
    ax.set_ylabel("true class's group")
    ax.set_title("Confusion between shot groups (row-normalised)")

    ax = fig.add_subplot(1, 2, 2)
    def name(i: int) -> str:
        return (names[i] if names else str(i))[:24]
    y = np.arange(len(top))
    ax.barh(y, top[:, 2], color="#4c72b0")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{name(int(t))} → {name(int(p))}" for t, p, _ in top], fontsize=7)
    ax.invert_yaxis()
    for k, (t, _, n) in enumerate(top):
        ax.text(n, k, f" {n} ({100.0 * n / support[t]:.0f}% of class)", va="center", fontsize=7)
    ax.set_xlim(0, (top[:, 2].max() if len(top) else 1) * 1.35)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("test images (true → predicted)")
    ax.set_title(f"Most confused class pairs (top {len(top)} of {off})")
    save_png(fig, path)


def _class_rows(order: np.ndarray, acc: np.ndarray, counts: np.ndarray,
                names: list[str] | None) -> list[str]:
    """Per-class Markdown table rows, head to tail (head/tail 10 only beyond 30 classes)."""
    def row(i: int) -> str:
        name = _cell(names[i]) if names else "-"
        return f"| {i} | {name} | {int(counts[i])} | {percent(float(acc[i]))} |"

    lines = ["| class | name | train images | accuracy |", "|---:|---|---:|---:|"]
    if len(order) <= _MAX_TICKS:
        return lines + [row(int(i)) for i in order]
    skipped = len(order) - 2 * _TABLE_EDGE
    return (lines + [row(int(i)) for i in order[:_TABLE_EDGE]]
            + [f"| … | *{skipped} classes omitted* | | |"]
            + [row(int(i)) for i in order[-_TABLE_EDGE:]])


_SPLIT_NAMES = {"test": "test set", "val": "validation split"}


def _held_out_lines(final: dict[str, Any], counts: np.ndarray) -> list[str]:
    """The validation split's line: how many training images it took, per class and in all."""
    held = final.get("val_counts")
    if not held:
        return ["- Model selection: best.pt chosen on the test set (the reference's protocol; set "
                "data.val_per_class to choose on a validation split)"]
    k, total = max(held), int(sum(held))
    return [f"- Model selection: best.pt chosen on a validation split of {k} images per class ({total} in all) "
            f"held out of the training subset: {int(counts.sum()) + total} -> {int(counts.sum())} training "
            "images; the test set is only reported"]


def write_report(run_dir: Path, final: dict, history: list[dict], config: dict) -> Path:
    """Write `report.md` and its PNG plots into `run_dir`; return the report's path."""
    run_dir = Path(run_dir)
    acc = np.array([np.nan if a is None else float(a) for a in final["per_class"]])
    counts = np.asarray(final["class_counts"], dtype=np.int64)
    names = final.get("class_names") or None
    if len(counts) == 0 or len(acc) != len(counts) or (names and len(names) != len(counts)):
        raise BBNError(f"report: per_class ({len(acc)}), class_counts ({len(counts)}) and "
                       f"class_names ({len(names or [])}) must all have one entry per class")
    order = np.argsort(-counts, kind="stable")
    n_in = {g: sum(shot_group(int(k)) == g for k in counts) for g in SHOT_GROUPS}

    images: list[tuple[str, str]] = []
    notes: dict[str, list[str]] = {}
    _plot_per_class(run_dir / "per_class.png", acc, counts, order, names)
    images.append(("Per-class accuracy vs class size", "per_class.png"))
    if history:
        _plot_curves(run_dir / "curves.png", history)
        images.append(("Training curves", "curves.png"))
    if final.get("confusion") is not None:  # format 2 (sparse) or format 1 (dense list)
        c, cells = confusion_cells(final["confusion"])
        if c != len(counts):
            raise BBNError(f"report: the confusion has {c} classes, class_counts {len(counts)}; "
                           "give the final.json that bbn train wrote")
        if c <= _MAX_TICKS:
            _plot_confusion(run_dir / "confusion.png", dense_confusion(final["confusion"]), names)
            images.append(("Confusion matrix", "confusion.png"))
        else:
            _plot_confusion_summary(run_dir / "confusion.png", cells, counts, names)
            images.append(("Confusion: shot groups and most confused pairs", "confusion.png"))
            notes["confusion.png"] = _confused_rows(cells, names)
    if (final.get("calibration") or {}).get("count"):
        _plot_reliability(run_dir / "reliability.png", final["calibration"], final.get("ece"))
        images.append(("Reliability diagram (calibration)", "reliability.png"))
    if final.get("weight_norms"):
        norms = [RunNorms("", final["weight_norms"], counts.tolist())]
        plot_weight_norms(run_dir / "weight_norms.png", norms)
        images.append(("Classifier weight norms (head → tail)", "weight_norms.png"))
        notes["weight_norms.png"] = [weight_norm_table(norms)]

    data, model = config.get("data") or {}, config.get("model") or {}
    method, train = config.get("method") or {}, config.get("train") or {}
    method_txt = str(method.get("name", "n/a"))
    if method.get("name") == "bbn":
        method_txt += (f" (adaptor: {method.get('adaptor', 'n/a')}, "
                       f"rebalance sampler: {method.get('rebalance_sampler', 'n/a')})")
    ratio, best_epoch = data.get("imbalance_ratio"), final.get("best_epoch", "n/a")
    selection = final.get("selection", "test")  # runs before the validation split chose on the test set
    observed = f"{counts.max() / counts.min():.1f}" if counts.min() > 0 else "n/a"
    lines = [
        f"# Run report: {config.get('name', run_dir.name)}", "",
        "| metric | value |", "|---|---:|",
        f"| top-1, last epoch | {percent(final.get('top1'))} |",
        f"| best top-1 (best epoch {best_epoch}, chosen on the {_SPLIT_NAMES[selection]}) "
        f"| {percent(final.get('best_top1'))} |",
        *([f"| validation top-1 of the best epoch | {percent(final.get('best_val_top1'))} |"]
          if selection == "val" else []),
        f"| best epoch | {best_epoch} |",
        f"| top-5, last epoch | {percent(final.get('top5'))} |",
        f"| error, last epoch | {percent(final.get('error'))} |",
    ]
    lines += [f"| {g}-shot top-1 ({_GROUP_RULES[g]}, {n_in[g]} classes) | {percent(final.get(g))} |"
              for g in SHOT_GROUPS]
    lines += _metric_rows(final)
    for name, b in (final.get("branches") or {}).items():
        shots = " / ".join(percent(b.get(g)) for g in SHOT_GROUPS)
        lines.append(f"| {name} alone ({_BRANCH_LOGITS.get(name, name)}) top-1 "
                     f"(many / medium / few), last epoch | {percent(b.get('top1'))} ({shots}) |")
    lines += [
        "",
        f"- Method: {method_txt}",
        f"- Model: {model.get('name', 'n/a')}",
        f"- Dataset: {data.get('source', 'n/a')} ({len(counts)} classes, {int(counts.sum())} "
        f"training images, profile {data.get('profile', 'n/a')})",
        f"- Imbalance ratio: {ratio if ratio is not None else 'n/a'} configured, "
        f"{observed} observed ({int(counts.max())} / {int(counts.min())} images)",
        *_held_out_lines(final, counts),
        f"- Epochs: {train.get('epochs', 'n/a')} configured, {len(history)} recorded",
        *(f"- Recipe: {note}" for note in final.get("recipe_notes", [])),
        f"- Parameters: {int(final.get('num_params', 0)):,}",
        f"- Training time: {_duration(final.get('train_s', 0.0))}",
        "",
    ]
    if final.get("shifted_priors"):
        lines += ["## Accuracy under shifted test priors, last epoch", "", *_shift_rows(final["shifted_priors"])]
    for title, fname in images:
        lines += [f"## {title}", "", f"![{title}]({fname})", "", *notes.get(fname, [])]
    lines += ["## Per-class accuracy (head → tail)", ""]
    if len(order) > _MAX_TICKS:
        lines += [f"Showing only the {_TABLE_EDGE} head and {_TABLE_EDGE} tail classes "
                  f"of {len(order)}; see per_class.png for all.", ""]
    lines += _class_rows(order, acc, counts, names) + [""]
    path = run_dir / "report.md"
    write_text_file(path, "\n".join(lines))
    return path
