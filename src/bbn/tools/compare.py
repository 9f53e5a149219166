"""`bbn compare RUN [RUN ...] [--out DIR]`: finished runs side by side.

One Markdown table (a row per run, then a row per group of runs whose configs are equal but
for the seed: mean ± sample std over its seeds), and with `--out DIR` the table as
DIR/compare.md, the runs' curves overlaid (DIR/curves.png) and each run's per-class accuracy
against the first run's, head to tail (DIR/per_class_diff.png). Every input is read and
checked before anything is written; each file is replaced atomically, DIR never deleted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bbn.config import build_config, read_yaml
from bbn.engine.metrics import SHOT_GROUPS, shot_group
from bbn.engine.runs import EXECUTION_KEYS, RunDir, flatten, read_metrics
from bbn.errors import BBNError, first_line
from bbn.tools.analysis import head_to_tail
from bbn.tools.figures import save_png, write_text_file
from bbn.tools.paper import method_label
from bbn.tools.reproduce import SOURCE_LABELS, mean_std

# final.json key -> column header; accuracies and ECE in %.
NUMERIC = {"top1": "top-1 last", "best_top1": "top-1 best", "best_epoch": "best epoch", "many": "many",
           "medium": "medium", "few": "few", "balanced_acc": "balanced acc", "ece": "ECE"}
HEADER = ["group", "run", "method", "model", "data", "seed", *NUMERIC.values(), "selection"]
DEFAULT_SELECTION = "test"  # every run before `selection` was recorded: best epoch chosen on the test set
_MAX_TICKS = 30


@dataclass
class Run:
    """One finished run folder, read."""

    root: Path
    config: dict[str, Any]  # the resolved config (defaults filled in)
    final: dict[str, Any]
    history: list[dict[str, Any]]
    label: str = ""

    def number(self, key: str) -> float | None:
        """final.json's `key` as a number; None when absent (an older final.json), null or NaN."""
        value = self.final.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return None
        return float(value)

    @property
    def selection(self) -> str:
        return str(self.final.get("selection") or DEFAULT_SELECTION)

    def group_key(self) -> str:
        """The config without `seed` and the keys that change how, not what, a run learns."""
        flat = flatten(self.config)
        return json.dumps({k: v for k, v in sorted(flat.items()) if k != "seed" and k not in EXECUTION_KEYS})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_run(path: str | Path) -> Run:
    """A finished run folder (config.yaml, final.json, metrics.jsonl), or a one-line BBNError."""
    run = RunDir(path)
    if not run.root.is_dir():
        what = "does not exist" if not run.root.exists() else "is not a folder"
        raise BBNError(f"run '{run.root}' {what}; pass a run folder written by bbn train")
    if not run.config.is_file():
        raise BBNError(f"'{run.root}' is not a run folder (no config.yaml); pass a folder written by bbn train")
    if not run.final.is_file():
        raise BBNError(f"run '{run.root}' is unfinished (no final.json); finish it with "
                       f"'bbn train --resume {run.root}', or leave it out")
    config = build_config(read_yaml(run.config)).to_dict()
    fix = f"write it again with 'bbn train --resume {run.root}'"
    try:
        final = json.loads(run.final.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BBNError(f"'{run.final}' cannot be read ({first_line(exc, 80)}); {fix}") from None
    counts, per_class = (final.get("class_counts"), final.get("per_class")) if isinstance(final, dict) else (0, 0)
    if (not isinstance(final, dict) or not _is_number(final.get("top1")) or not isinstance(per_class, list)
            or not isinstance(counts, list) or len(per_class) != len(counts)
            or not all(a is None or _is_number(a) for a in per_class) or not all(map(_is_number, counts))):
        raise BBNError(f"'{run.final}' is not a final.json of bbn train (no top-1, or per_class and class_counts "
                       f"missing, not numbers or of different lengths); {fix}")
    try:
        history = read_metrics(run.metrics)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BBNError(f"'{run.metrics}' cannot be read ({first_line(exc, 80)}); "
                       "restore the run's metrics.jsonl, or leave the run out") from None
    return Run(run.root, config, final, [h for h in history if isinstance(h, dict)])


def short_labels(roots: Sequence[Path]) -> list[str]:
    """Each run's folder name, with as many parent folders as it takes to tell them apart."""
    parts = [Path(r).resolve().parts for r in roots]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(r) for r in roots]  # the same folder given twice


def group_runs(runs: Sequence[Run]) -> list[list[int]]:
    """Indices of runs whose configs are equal but for the seed, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(run.group_key(), []).append(i)
    return list(groups.values())


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return str(int(value)) if key == "best_epoch" else f"{value:.2f}"


def group_cell(key: str, values: Sequence[float | None]) -> str:
    """mean ± sample std over the seeds that have the value; one value alone shows no ±."""
    present = [v for v in values if v is not None]
    if len(present) == 1:
        return _fmt(key, present[0])
    return mean_std(present)


def _describe(run: Run) -> list[str]:
    data, model, method = run.config["data"], run.config["model"], run.config["method"]
    source = SOURCE_LABELS.get(data["source"], data["source"])
    profile = data.get("profile", "exp")
    shape = "(as given)" if profile == "none" else f"IR{float(data['imbalance_ratio']):g}" + (
        f" {profile}" if profile != "exp" else "")
    return [method_label(method["name"]), str(model["name"]), f"{source} {shape}"]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def table(runs: Sequence[Run]) -> str:
    """The Markdown table: a row per run, then a row per group (mean ± std over seeds)."""
    groups = group_runs(runs)
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    lines = [_row(HEADER), "|" + "---|" * 6 + "---:|" * len(NUMERIC) + "---|"]
    for i, run in enumerate(runs):
        lines.append(_row([f"G{group_of[i] + 1}", run.label, *_describe(run), str(run.config["seed"]),
                           *(_fmt(k, run.number(k)) for k in NUMERIC), run.selection]))
    for g, members in enumerate(groups):
        seeds = ", ".join(str(runs[i].config["seed"]) for i in members)
        n = len(members)
        lines.append(_row([f"G{g + 1}", "mean ± std" if n > 1 else "(one seed)", *_describe(runs[members[0]]),
                           f"{n} seed{'s' if n > 1 else ''} ({seeds})",
                           *(group_cell(k, [runs[i].number(k) for i in members]) for k in NUMERIC),
                           "/".join(dict.fromkeys(runs[i].selection for i in members))]))
    return "\n".join(lines) + "\n"


NOTES = ("Accuracies and ECE in %, at the last epoch except top-1 best (at the best epoch). A group (G) "
         "is the runs whose configs are equal but for the seed; its row is the mean ± sample std over its "
         "seeds. selection: the split the best epoch was chosen on (test: the test set, as the paper's "
         "reference does; val: the held-out validation split). n/a: not in that run's final.json.")


def per_class_runs(runs: Sequence[Run]) -> None:
    """Raise a one-line BBNError unless every run has the first run's classes."""
    c = len(runs[0].final["per_class"])
    for run in runs[1:]:
        if len(run.final["per_class"]) != c:
            raise BBNError(f"run '{run.root}' has {len(run.final['per_class'])} classes, the first run "
                           f"'{runs[0].root}' {c}: per_class_diff.png compares runs of one class set; "
                           "leave it out, or compare it without --out")


def plot_curves(path: Path, runs: Sequence[Run]) -> Path:
    """Val top-1 per evaluated epoch and train loss per epoch, one line per run."""
    fig = Figure(figsize=(8, 6.5))
    ax_acc, ax_loss = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    for k, run in enumerate(runs):
        colour = f"C{k % 10}"
        for ax, key, marker in ((ax_acc, "val_top1", "o"), (ax_loss, "train_loss", ".")):
            pts = [(h["epoch"], float(h[key])) for h in run.history
                   if isinstance(h.get(key), (int, float)) and "epoch" in h]
            if pts:
                ax.plot(*zip(*pts), marker=marker, markersize=4, color=colour, label=run.label)
    ax_acc.set_ylabel("val top-1 (%)")
    ax_acc.set_title("Val top-1 per evaluated epoch")
    ax_loss.set_ylabel("train loss")
    ax_loss.set_title("Train loss per epoch")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return save_png(fig, path)


def per_class_difference(runs: Sequence[Run]) -> tuple[np.ndarray, np.ndarray]:
    """(class order head -> tail by the first run's training counts, runs-1 x C differences in
    percentage points of each later run's per-class accuracy against the first run's)."""
    def acc(run: Run) -> np.ndarray:
        return np.array([np.nan if a is None else float(a) for a in run.final["per_class"]])

    order = head_to_tail(runs[0].final["class_counts"])
    base = acc(runs[0])
    diffs = np.array([(acc(run) - base)[order] for run in runs[1:]]).reshape(len(runs) - 1, len(order))
    return order, diffs


def plot_per_class_diff(path: Path, runs: Sequence[Run]) -> Path:
    """Each run's per-class accuracy minus the first run's, classes head -> tail."""
    order, diffs = per_class_difference(runs)
    counts = np.asarray(runs[0].final["class_counts"])
    names = runs[0].final.get("class_names")
    n = len(order)
    x = np.arange(n)
    fig = Figure(figsize=(max(7.0, min(16.0, 0.3 * n)), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.axhline(0.0, color="black", linewidth=0.8)
    groups = [shot_group(int(counts[i])) for i in order]
    for g in SHOT_GROUPS:  # the shot groups of the first run's classes, head to tail
        idx = [i for i, gg in enumerate(groups) if gg == g]
        if idx and len(set(groups)) > 1:
            ax.axvspan(min(idx) - 0.5, max(idx) + 0.5, alpha=0.06, color="gray", zorder=0)
            ax.text((min(idx) + max(idx)) / 2, 1.01, g, transform=ax.get_xaxis_transform(), ha="center", fontsize=8)
    for k, (run, diff) in enumerate(zip(runs[1:], diffs), start=1):
        mean = np.nanmean(diff) if np.isfinite(diff).any() else float("nan")
        ax.plot(x, diff, marker="o" if n <= 50 else None, markersize=3, color=f"C{k % 10}",
                label=f"{run.label} (mean {mean:+.2f})")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylabel(f"accuracy − {runs[0].label} (points)")
    ax.set_title(f"Per-class test accuracy against {runs[0].label} (head → tail)", pad=14)
    if n <= _MAX_TICKS and isinstance(names, list) and len(names) == n:
        ax.set_xticks(x)
        ax.set_xticklabels([str(names[i]) for i in order], rotation=60 if n > 10 else 0, fontsize=8)
        ax.set_xlabel("class (sorted by training images of the first run, head → tail)")
    else:
        ax.set_xlabel(f"class rank by training images of the first run (0 = head, {n - 1} = tail)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def check_out(out: Path) -> None:
    """--out is a folder to create or write into, never a file or a run folder."""
    if out.exists() and not out.is_dir():
        raise BBNError(f"--out '{out}' is a file, not a folder; choose a folder (new or existing) for "
                       "compare.md and the plots")
    if RunDir(out).config.is_file():
        raise BBNError(f"--out '{out}' is a run folder and its curves.png would be replaced; "
                       "choose another folder")


def compare(paths: Sequence[str | Path], out: str | Path | None = None,
            command: str = "bbn compare") -> tuple[str, list[Path]]:
    """The table's text, and with `out` the files written there (compare.md, curves.png and,
    for two runs or more, per_class_diff.png). Everything is checked before anything is written."""
    if not paths:
        raise BBNError("no run to compare; give at least one RUN folder, e.g. bbn compare runs/a runs/b")
    runs = [read_run(p) for p in paths]
    for run, label in zip(runs, short_labels([r.root for r in runs])):
        run.label = label
    text = table(runs) + "\n" + NOTES + "\n"
    if out is None:
        return text, []
    out = Path(out)
    check_out(out)
    per_class_runs(runs)
    figures = [("Curves", "curves.png")] + ([("Per-class accuracy against the first run", "per_class_diff.png")]
                                          if len(runs) > 1 else [])
    doc = ["# Run comparison", "", f"Command: `{command}`", "", text.rstrip(), ""]
    for title, name in figures:
        doc += [f"## {title}", "", f"![{title}]({name})", ""]
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = [write_text_file(out / "compare.md", "\n".join(doc)), plot_curves(out / "curves.png", runs)]
        if len(runs) > 1:
            written.append(plot_per_class_diff(out / "per_class_diff.png", runs))
    except OSError as exc:
        raise BBNError(f"cannot write into --out '{out}' ({exc.strerror or exc}); choose a writable folder") from None
    return text, written
