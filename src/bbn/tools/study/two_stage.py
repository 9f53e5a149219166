"""The two-stage study of the paper's Figure 1 (SPEC §7).

Stage 1 learns the whole network with CE, RW or RS (the representation manner); stage 2
freezes its features and learns a new classifier from scratch with CE, RW or RS (the
classifier manner). The result is a 3 x 3 grid of test top-1 errors. Stage-1 runs are
ordinary run folders, so the study is resumable: a finished run is reused and a stopped
one is resumed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bbn.config import Config, build_config
from bbn.errors import BBNError
from bbn.tools.figures import save_png
from bbn.methods import METHODS
from bbn.engine.runs import RunDir, write_json
from bbn.tools.study.classifier import STAGE2_EPOCHS, Stage2, own_metrics, retrain_classifier
from bbn.tools.study.features import frozen_features, load_run
from bbn.tools.runner import continue_run

MANNERS = ("ce", "rw", "rs")  # representation manners (rows) and classifier manners (columns)
STAGE1_MODEL = "resnet32"
SUMMARY_KEYS = ("top1", "top5", "error", "many", "medium", "few")


def stage1_config(base: Config, manner: str) -> Config:
    """`base` with method.name=<manner> and model.name=resnet32."""
    return build_config(base.to_dict(), [f"method.name={manner}", f"model.name={STAGE1_MODEL}",
                                         f"name={base.name}-stage1-{manner}"])


def stage1(cfg: Config, folder: Path, progress: bool, log: Callable[[str], None]) -> RunDir:
    """The stage-1 run in `folder`: reused when finished, resumed when stopped, else started."""
    log(f"stage 1 {cfg.method.name}: {folder}")
    return continue_run(cfg, folder, progress=progress, log=log)[0]


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in SUMMARY_KEYS}


def two_stage(base: Config, out: str | Path, classifier_epochs: int = STAGE2_EPOCHS, label: str = "",
              progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the study into folder `out`: DIR/stage1-<manner> runs, then two_stage.md, .png
    and .json with the 3 x 3 grid of top-1 errors (rows: representation, columns: classifier)."""
    configs = {m: stage1_config(base, m) for m in MANNERS}
    for m in MANNERS:
        METHODS.get(m)  # all three training rules must exist before anything is trained
    Stage2.from_config(base, classifier_epochs)  # validate before stage 1
    root = Path(out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BBNError(f"cannot create the study folder '{root}' ({exc.strerror or exc}); choose a writable --out") from None
    runs = {m: stage1(configs[m], root / f"stage1-{m}", progress, log) for m in MANNERS}

    grid: dict[str, dict[str, Any]] = {}
    stage1_results: dict[str, Any] = {}
    for rep, run in runs.items():
        trained = load_run(run.root)
        feats = frozen_features(trained)
        settings = Stage2.from_config(trained.cfg, classifier_epochs)
        own = _summary(own_metrics(feats))  # the end-to-end network
        stage1_results[rep] = {"run": str(run.root), "epochs": trained.epoch, **own}
        grid[rep] = {}
        for cls in MANNERS:
            result = retrain_classifier(feats, cls, settings)
            grid[rep][cls] = _summary(result)
            log(f"stage 2: {rep.upper()} representation + {cls.upper()} classifier: "
                f"top-1 error {result['error']:.2f}%")
    study = {
        "config": label or base.name, "date": time.strftime("%Y-%m-%d %H:%M"),
        "classifier_epochs": classifier_epochs, "rows": "representation (stage 1)",
        "columns": "classifier (stage 2)", "manners": list(MANNERS),
        "error": [[grid[r][c]["error"] for c in MANNERS] for r in MANNERS],
        "grid": grid, "stage1": stage1_results,
    }
    write_json(root / "two_stage.json", study)
    (root / "two_stage.md").write_text(two_stage_markdown(study))
    plot_two_stage(study, root / "two_stage.png")
    return study


def _error(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _grid_table(study: dict[str, Any], value: Callable[[dict[str, Any]], float | None]) -> list[str]:
    names = [m.upper() for m in study["manners"]]
    lines = ["| representation \\ classifier | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for r in study["manners"]:
        cells = [_error(value(study["grid"][r][c])) for c in study["manners"]]
        lines.append(f"| {r.upper()} | " + " | ".join(cells) + " |")
    return lines


def few_error(metrics: dict[str, Any]) -> float | None:
    """Error % on the few-shot classes (100 - their mean accuracy); None without such classes."""
    return None if metrics.get("few") is None else 100.0 - metrics["few"]


def two_stage_markdown(study: dict[str, Any]) -> str:
    """two_stage.md: the grid in the layout of the paper's Figure 1, then the tail and stage 1."""
    lines = [
        "# Two-stage study (BBN, Figure 1)", "",
        f"Config: `{study['config']}` — {study['date']}", "",
        "Top-1 error % on the test set (lower is better). Rows: how the representation was "
        "learned (stage 1, the whole network). Columns: how the classifier was learned from "
        f"scratch on the frozen features (stage 2, {study['classifier_epochs']} epoch(s)).", "",
        *_grid_table(study, lambda m: m["error"]), "",
        "Few-shot error % (classes with fewer than 20 training images):", "",
        *_grid_table(study, few_error), "",
        "Stage 1 end to end (each network with its own classifier):", "",
        "| representation | error % | few-shot error % | run |", "|---|---:|---:|---|",
    ]
    for m in study["manners"]:
        s1 = study["stage1"][m]
        lines.append(f"| {m.upper()} | {_error(s1['error'])} | {_error(few_error(s1))} | `{s1['run']}` |")
    return "\n".join(lines) + "\n"


def plot_two_stage(study: dict[str, Any], path: Path) -> None:
    """Heatmaps of the top-1 error grid and the few-shot error grid, values annotated."""
    manners = study["manners"]
    names = [m.upper() for m in manners]
    panels = [("top-1 error %", lambda m: m["error"]), ("few-shot error %", few_error)]
    fig = Figure(figsize=(9, 4))
    FigureCanvasAgg(fig)
    for i, (title, value) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        grid = np.array([[np.nan if value(study["grid"][r][c]) is None else value(study["grid"][r][c])
                          for c in manners] for r in manners], dtype=float)
        lo, hi = (0.0, 100.0) if np.isnan(grid).all() else (float(np.nanmin(grid)), float(np.nanmax(grid)))
        im = ax.imshow(grid, cmap="viridis_r", vmin=lo, vmax=max(hi, lo + 1e-6))  # colours span the grid's range
        for r in range(len(manners)):
            for c in range(len(manners)):
                dark = not np.isnan(grid[r, c]) and im.norm(grid[r, c]) > 0.5
                text = "n/a" if np.isnan(grid[r, c]) else f"{grid[r, c]:.1f}"
                ax.text(c, r, text, ha="center", va="center", color="white" if dark else "black")
        ax.set_xticks(range(len(manners)), names)
        ax.set_yticks(range(len(manners)), names)
        ax.set_xlabel("classifier (stage 2)")
        ax.set_ylabel("representation (stage 1)")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"Two-stage study: {study['config']}")
    save_png(fig, path)
