"""`bbn eval RUN_OR_CHECKPOINT`, and BBN's branches evaluated alone (BBN-CB, BBN-RB)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bbn.data.loader import ImageSet, create_image_set
from bbn.devices import resolve_device
from bbn.engine.evaluate import evaluate, infer, load_run
from bbn.engine.metrics import classification_metrics
from bbn.engine.results import write_results
from bbn.engine.speed import autocast, autocast_dtype, memory_format
from bbn.errors import BBNError
from bbn.models import BilateralModel, num_params
from bbn.models.branches import BRANCH_LABELS


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


def eval_command(target: str | Path, device_name: str = "auto", branch: str = "all") -> dict[str, Any]:
    """Evaluate a run's best checkpoint (or a given one) on its test set; write eval.json
    (eval_cb.json / eval_rb.json for one branch alone, so no evaluation replaces another)."""
    if branch not in EVAL_BRANCHES:
        raise BBNError(f"unknown branch '{branch}'; use one of {', '.join(EVAL_BRANCHES)}")
    device = resolve_device(device_name)
    loaded = load_run(target, device)
    model, data, cfg = loaded.model, loaded.data, loaded.cfg
    alone = branch != "all"
    if alone and not isinstance(model, BilateralModel):
        raise BBNError(f"--branch {branch} needs a bilateral (BBN) model but '{loaded.checkpoint}' holds "
                       f"{cfg.model.name}; use --branch all")
    fmt = memory_format(cfg.train.channels_last)
    model.to(memory_format=fmt)
    test = create_image_set(data.test, cfg, data.mean, data.std, device, fmt, "test")
    with autocast(device, autocast_dtype(cfg.train.precision, device)):  # as the run evaluated itself
        if not alone:
            result = evaluate(model, test, data.class_counts, cfg.train.eval_batch_size)
        else:
            logits, labels = predict_branch(model, test, cfg.train.eval_batch_size, branch)
            result = classification_metrics(logits, labels, data.class_counts)
    result.update(checkpoint=str(loaded.checkpoint), epoch=loaded.payload.get("epoch"),
                  branch=BRANCH_LABELS[branch] if alone else "all", class_counts=data.class_counts,
                  class_names=data.train.class_names, num_params=num_params(model))
    write_results(loaded.run_root / ("eval.json" if not alone else f"eval_{branch}.json"), result)
    return result
