"""`bbn eval RUN_OR_CHECKPOINT`, BBN's branches evaluated alone (BBN-CB, BBN-RB), and the
post-hoc adjustments of `--adjust` (bbn.tools.adjust) applied to the one inference pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from bbn.data.loader import ImageSet, create_image_set
from bbn.data.files import ImageFiles
from bbn.data.sources import LabeledImages, Splits
from bbn.devices import resolve_device
from bbn.engine.evaluate import infer, load_run, predict
from bbn.engine.metrics import classification_metrics
from bbn.engine.results import write_results
from bbn.engine.speed import autocast, memory_format, resolve_precision
from bbn.errors import BBNError
from bbn.models import BilateralModel, num_params
from bbn.models.branches import BRANCH_LABELS
from bbn.tools.adjust import Basis, Outputs, adjusted_results, linear_head, needs_features, parse_adjustments


def predict_branch(model: BilateralModel, data: ImageSet, batch_size: int,
                   branch: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of one branch alone ('cb': BBN-CB, W_c f_c + b; 'rb': BBN-RB, W_r f_r + b), and labels."""
    return infer(model, lambda x: model.branch_logits(x, branch), data, batch_size)


def evaluate_branches(model: nn.Module, data: ImageSet, train_counts: list[int],
                      batch_size: int) -> dict[str, dict[str, float | None]] | None:
    """{"BBN-CB": {top1, many, medium, few}, "BBN-RB": {...}}: each branch of a bilateral
    model evaluated alone (SPEC §2, §7); None for a model without branches."""
    if not isinstance(model, BilateralModel):
        return None
    out = {}
    for branch, label in BRANCH_LABELS.items():
        metrics = classification_metrics(*predict_branch(model, data, batch_size, branch), train_counts)
        out[label] = {key: metrics[key] for key in ("top1", "many", "medium", "few")}
    return out


# `bbn eval --branch`: all = the normal inference (alpha = 0.5), cb / rb = one branch alone.
EVAL_BRANCHES = ("all", *BRANCH_LABELS)


def infer_outputs(model: nn.Module, data: ImageSet, batch_size: int, branch: str = "all",
                  with_features: bool = False) -> Outputs:
    """One inference pass over `data`: the logits of `model(x)` (alpha = 0.5 for BBN) or of one
    branch alone, the labels and, `with_features`, the features its linear classifier acts on
    (BBN: cat(f_c, f_r), or the branch's f), computed in the same pass as the logits."""
    if not with_features:
        if branch == "all":
            return Outputs(*predict(model, data, batch_size))
        return Outputs(*predict_branch(model, data, batch_size, branch))

    def logits_and_features(x: torch.Tensor) -> torch.Tensor:
        if isinstance(model, BilateralModel) and branch == "all":
            f_c, f_r = model.features_both(x)
            parts = (model.logits(f_c, f_r, 0.5), f_c, f_r)
        elif isinstance(model, BilateralModel):
            f = model.features(x, branch)
            w, b = model.branch_classifier(branch)
            parts = (f @ w.t() + b, f)
        else:
            f = model.features(x)
            parts = (model.classifier(f), f)
        return torch.cat([p.float() for p in parts], dim=1)

    both, labels = infer(model, logits_and_features, data, batch_size)
    num_classes = model.classifier.weight.shape[0]
    return Outputs(both[:, :num_classes], labels, both[:, num_classes:])


def validation_set(data: Splits) -> LabeledImages | ImageFiles | None:
    """The run's held-out validation split, or None (then a `--adjust ...:tau=sweep` selects
    tau on the test set and says so): the one place the sweep looks for it."""
    return data.val


def eval_command(target: str | Path, device_name: str = "auto", branch: str = "all",
                 adjust: Sequence[str] | None = None, precision: str | None = None) -> dict[str, Any]:
    """Evaluate a run's best checkpoint (or a given one) on its test set; write eval.json
    (eval_cb.json / eval_rb.json for one branch alone, so no evaluation replaces another).
    `adjust`: `--adjust` values (bbn.tools.adjust), reported under `adjusted`, each computed
    from the same single inference pass. The forward pass runs in `precision` (default: the
    run's train.precision as it resolves on this device, bbn.engine.speed), recorded as
    `precision` in the result."""
    if branch not in EVAL_BRANCHES:
        raise BBNError(f"unknown branch '{branch}'; use one of {', '.join(EVAL_BRANCHES)}")
    specs = parse_adjustments(adjust)
    device = resolve_device(device_name)
    loaded = load_run(target, device)
    model, data, cfg = loaded.model, loaded.data, loaded.cfg
    alone = branch != "all"
    if alone and not isinstance(model, BilateralModel):
        raise BBNError(f"--branch {branch} needs a bilateral (BBN) model but '{loaded.checkpoint}' holds "
                       f"{cfg.model.name}; use --branch all")
    features = needs_features(specs)
    head = linear_head(model, branch, f"the {cfg.model.name} model of '{loaded.checkpoint}'") if features else None
    fmt = memory_format(cfg.train.channels_last)
    model.to(memory_format=fmt)
    test = create_image_set(data.test, cfg, data.mean, data.std, device, fmt, "test")
    held_out = validation_set(data) if any(spec.tau is None for spec in specs) else None
    batch = cfg.train.eval_batch_size
    mode = resolve_precision(precision or cfg.train.precision, device)
    with autocast(device, mode.dtype):  # as a run of cfg evaluates on this device, unless `precision` says
        outputs = infer_outputs(model, test, batch, branch, features)
        val = None if held_out is None else infer_outputs(
            model, create_image_set(held_out, cfg, data.mean, data.std, device, fmt, "val"), batch, branch, features)
    result = classification_metrics(outputs.logits, outputs.labels, data.class_counts)
    if specs:  # outside autocast: every adjustment in float32
        result["adjusted"] = adjusted_results(specs, outputs, Basis(data.class_counts, head), val)
    result.update(checkpoint=str(loaded.checkpoint), epoch=loaded.payload.get("epoch"),
                  branch=BRANCH_LABELS[branch] if alone else "all", class_counts=data.class_counts,
                  class_names=data.train.class_names, num_params=num_params(model),
                  precision={"name": mode.name, "why": mode.why if precision is None else "set by --precision"})
    write_results(loaded.run_root / ("eval.json" if not alone else f"eval_{branch}.json"), result)
    return result
