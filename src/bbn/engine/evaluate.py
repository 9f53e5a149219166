"""Inference over a test set, and loading the model of a run folder or checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from bbn.engine.checkpoint import load_checkpoint
from bbn.config import Config, build_config
from bbn.devices import resolve_device
from bbn.data.loader import ImageSet
from bbn.data.prepare import prepare_data
from bbn.data.sources import Splits
from bbn.errors import BBNError
from bbn.engine.metrics import classification_metrics
from bbn.models import build_model
from bbn.engine.runs import RunDir


@torch.no_grad()
def infer(model: nn.Module, logits_of: Callable[[torch.Tensor], torch.Tensor], data: ImageSet,
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


def predict(model: nn.Module, data: ImageSet, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference logits (for BBN: alpha = 0.5, both branches on the same image) and labels."""
    return infer(model, model, data, batch_size)


def evaluate(model: nn.Module, data: ImageSet, train_counts: list[int], batch_size: int) -> dict[str, Any]:
    logits, labels = predict(model, data, batch_size)
    return classification_metrics(logits, labels, train_counts)


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
    model = build_model(cfg, data.train.num_classes, data.train.channels, pretrained=False)
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, AttributeError, KeyError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        reason = (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__)[:120]
        raise BBNError(f"checkpoint '{ckpt_path}' holds weights that do not fit {cfg.model.name} ({reason}); "
                       "use a checkpoint written by bbn train with its own config") from None
    model.to(resolve_device(cfg.train.device) if device is None else device)
    return LoadedRun(model, payload, cfg, data, ckpt_path, run_root)
