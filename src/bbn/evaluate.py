"""Inference over a test set and `bbn eval RUN_OR_CHECKPOINT`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from bbn.checkpoint import load_checkpoint
from bbn.config import Config, build_config
from bbn.devices import check_device
from bbn.data.loader import DeviceImages, create_image_set
from bbn.data.prepare import prepare_data
from bbn.data.sources import Splits
from bbn.errors import BBNError
from bbn.metrics import classification_metrics
from bbn.models import BilateralModel, create_model, num_params
from bbn.models.bilateral import BRANCH_KEYS, BRANCH_LABELS
from bbn.results import write_results
from bbn.runs import RunDir
from bbn.speed import autocast, autocast_dtype, memory_format


@torch.no_grad()
def infer(model: nn.Module, logits_of: Callable[[torch.Tensor], torch.Tensor], data: DeviceImages,
                  batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`logits_of(x)` (logits or features) over every batch of `data` in order, un-augmented,
    with `model` in eval mode, and the labels."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in data.eval_batches(batch_size):
        logits.append(logits_of(x).float())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def predict(model: nn.Module, data: DeviceImages, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference logits (for BBN: alpha = 0.5, both branches on the same image) and labels."""
    return infer(model, model, data, batch_size)


# The single-branch models of the paper's analysis (SPEC §2, §7) -> the branch they keep.
BRANCH_MODELS = {BRANCH_LABELS[k]: BRANCH_KEYS[k] for k in BRANCH_KEYS}


def predict_branch(model: BilateralModel, data: DeviceImages, batch_size: int,
                   name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of one branch alone: BBN-CB (W_c f_c + b) or BBN-RB (W_r f_r + b), and labels."""
    branch = BRANCH_MODELS[name]
    return infer(model, lambda x: model.branch_logits(x, branch), data, batch_size)


def evaluate(model: nn.Module, data: DeviceImages, train_counts: list[int], batch_size: int) -> dict[str, Any]:
    logits, labels = predict(model, data, batch_size)
    return classification_metrics(logits, labels, train_counts)


def evaluate_branches(model: nn.Module, data: DeviceImages, train_counts: list[int],
                      batch_size: int) -> dict[str, dict[str, float | None]] | None:
    """{"BBN-CB": {top1, many, medium, few}, "BBN-RB": {...}}: each branch of a bilateral
    model evaluated alone; None for a model without branches."""
    if not isinstance(model, BilateralModel):
        return None
    out = {}
    for name in BRANCH_MODELS:
        metrics = classification_metrics(*predict_branch(model, data, batch_size, name), train_counts)
        out[name] = {key: metrics[key] for key in ("top1", "many", "medium", "few")}
    return out


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; a device this machine lacks is a BBNError."""
    return torch.device(check_device(name))


def checkpoint_file(target: str | Path) -> Path:
    """A run folder's best.pt (else last.pt), or the checkpoint file itself."""
    target = Path(target)
    if not target.exists():
        raise BBNError(f"'{target}' does not exist; pass a run folder or a checkpoint file")
    if target.is_dir():
        run = RunDir(target)
        return run.best if run.best.is_file() else run.last
    return target


def _checkpoint_path(target: Path) -> tuple[Path, Path]:
    """(checkpoint, folder to write eval.json into) for a run folder or a .pt file."""
    if target.is_dir():
        return checkpoint_file(target), target
    return checkpoint_file(target), target.parent.parent if target.parent.name == "checkpoints" else target.parent


@dataclass
class LoadedRun:
    """A checkpoint's model (on `device`), its config and data, and where it came from."""

    model: nn.Module
    payload: dict[str, Any]
    cfg: Config
    data: Splits
    checkpoint: Path
    run_root: Path


def load_run(target: str | Path, device: torch.device | None = None) -> LoadedRun:
    """The model of a run folder (its best.pt, else last.pt) or of a checkpoint file, on
    `device` (None: the device its config names)."""
    ckpt_path, run_root = _checkpoint_path(Path(target))
    payload = load_checkpoint(ckpt_path)
    if payload.get("imported_from", {}).get("data_config") is False:
        raise BBNError(f"checkpoint '{ckpt_path}' was imported without a data config; import it again with "
                       "bbn import-reference ... --config CONFIG naming its test data")
    try:
        cfg = build_config(payload["config"])
    except BBNError as err:
        raise BBNError(f"checkpoint '{ckpt_path}' holds an invalid config ({err}); use a checkpoint written "
                       "by bbn train") from None
    data = prepare_data(cfg)
    model = create_model(cfg.model.name, data.train.num_classes, data.train.channels)
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, AttributeError, KeyError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        reason = (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__)[:120]
        raise BBNError(f"checkpoint '{ckpt_path}' holds weights that do not fit {cfg.model.name} ({reason}); "
                       "use a checkpoint written by bbn train with its own config") from None
    model.to(resolve_device(cfg.train.device) if device is None else device)
    return LoadedRun(model, payload, cfg, data, ckpt_path, run_root)


# `bbn eval --branch`: all = the normal inference (alpha = 0.5), cb / rb = one branch alone.
EVAL_BRANCHES = {"all": None, **BRANCH_LABELS}


def eval_command(target: str | Path, device_name: str = "auto", branch: str = "all") -> dict[str, Any]:
    """Evaluate a run's best checkpoint (or a given one) on its test set; write eval.json
    (eval_cb.json / eval_rb.json for one branch alone, so no evaluation replaces another)."""
    if branch not in EVAL_BRANCHES:
        raise BBNError(f"unknown branch '{branch}'; use one of {', '.join(EVAL_BRANCHES)}")
    device = resolve_device(device_name)
    loaded = load_run(target, device)
    model, data, cfg = loaded.model, loaded.data, loaded.cfg
    name = EVAL_BRANCHES[branch]
    if name is not None and not isinstance(model, BilateralModel):
        raise BBNError(f"--branch {branch} needs a bilateral (BBN) model but '{loaded.checkpoint}' holds "
                       f"{cfg.model.name}; use --branch all")
    fmt = memory_format(cfg.train.channels_last)
    model.to(memory_format=fmt)
    test = create_image_set(data.test, cfg, data.mean, data.std, device, fmt, "test")
    with autocast(device, autocast_dtype(cfg.train.precision, device)):  # as the run evaluated itself
        if name is None:
            result = evaluate(model, test, data.class_counts, cfg.train.eval_batch_size)
        else:
            logits, labels = predict_branch(model, test, cfg.train.eval_batch_size, name)
            result = classification_metrics(logits, labels, data.class_counts)
    result.update(checkpoint=str(loaded.checkpoint), epoch=loaded.payload.get("epoch"),
                  branch=name or "all", class_counts=data.class_counts,
                  class_names=data.train.class_names, num_params=num_params(model))
    write_results(loaded.run_root / ("eval.json" if name is None else f"eval_{branch}.json"), result)
    return result
