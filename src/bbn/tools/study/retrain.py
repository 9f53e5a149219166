"""`bbn study retrain RUN --rule R`: a new classifier on a run's frozen representation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from bbn.errors import BBNError
from bbn.engine.metrics import percent, summary_lines
from bbn.engine.runs import write_json
from bbn.tools.study.classifier import (CLASSIFIER_RULES, DEFAULT_TAUS, STAGE2_EPOCHS, Stage2, retrain_classifier,
                                  tau_norm)
from bbn.tools.study.features import frozen_features, load_run

FEATURE_NAMES = {None: "GAP feature f", "cb": "f_c (conventional branch)", "rb": "f_r (re-balancing branch)"}


def default_output(run: str | Path, rule: str, branch: str | None) -> Path:
    """RUN/retrain-<rule>[-<branch>].json"""
    return Path(run) / (f"retrain-{rule}-{branch}.json" if branch else f"retrain-{rule}.json")


def retrain_run(run: str | Path, rule: str, branch: str | None = None, epochs: int | None = None,
                taus: Sequence[float] | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Retrain (or, for tau_norm, rescale) the classifier of run folder `run` on its frozen
    features with `rule`; writes the result JSON (default RUN/retrain-<rule>[-<branch>].json)."""
    fn = CLASSIFIER_RULES.get(rule)
    if fn is tau_norm and epochs is not None:
        raise BBNError("tau_norm trains nothing, so --epochs has no effect; drop --epochs")
    if fn is not tau_norm and taus is not None:
        raise BBNError(f"--taus is for --rule tau_norm only; drop it for --rule {rule}")
    trained = load_run(run)
    out_path = Path(out) if out is not None else default_output(run, rule, branch)
    if not out_path.parent.is_dir():
        raise BBNError(f"cannot write '{out_path}': folder '{out_path.parent}' does not exist; choose another --out")
    feats = frozen_features(trained, branch)
    settings = Stage2.from_config(trained.cfg, STAGE2_EPOCHS if epochs is None else epochs,
                                  DEFAULT_TAUS if taus is None else tuple(taus))
    result = retrain_classifier(feats, rule, settings)
    result.update(run=str(trained.root), checkpoint_epoch=trained.epoch, branch=branch,
                  features=FEATURE_NAMES[branch], model=trained.cfg.model.name,
                  method=trained.cfg.method.name, class_counts=trained.class_counts)
    try:
        write_json(out_path, result)
    except OSError as exc:
        raise BBNError(f"cannot write '{out_path}' ({exc.strerror or exc}); choose a writable --out") from None
    result["output"] = str(out_path)
    return result


def format_retrain(result: dict[str, Any]) -> str:
    """What `bbn study retrain` prints: the setting, the metrics, the run's own top-1."""
    rule = result["rule"]
    what = "classifier rescaled (no training)" if "taus" in result else (
        f"classifier trained for {result['settings']['epochs']} epochs")
    lines = [f"{result['run']} (epoch {result['checkpoint_epoch']}, {result['method']}), frozen "
             f"{result['features']}, rule {rule}: {what}"]
    if "taus" in result:
        lines.append("  tau   top-1    many     medium   few")
        for row in result["taus"]:
            mark = " *" if row["tau"] == result["best_tau"] else ""
            lines.append(f"  {row['tau']:<4g}  {percent(row['top1']):>7}  {percent(row['many']):>7}  "
                         f"{percent(row['medium']):>7}  {percent(row['few']):>7}{mark}")
        lines.append(f"best tau {result['best_tau']:g} (*): {result['note']}")
    lines += summary_lines(result)
    lines.append(f"the run's own classifier on these features: top-1 {percent(result['own_top1'])}")
    lines.append(f"written: {result['output']}")
    return "\n".join(lines)

