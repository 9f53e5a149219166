"""Inference over a test set and `bbn eval RUN_OR_CHECKPOINT`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bbn.checkpoint import load_checkpoint
from bbn.config import build_config
from bbn.data.loader import DeviceImages
from bbn.data.prepare import prepare_data
from bbn.errors import BBNError
from bbn.metrics import classification_metrics
from bbn.models import create_model, num_params
from bbn.runs import RunDir, write_json


@torch.no_grad()
def predict(model: nn.Module, data: DeviceImages, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference logits (for BBN: alpha = 0.5, both branches on the same image) and labels."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in data.eval_batches(batch_size):
        logits.append(model(x).float())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, data: DeviceImages, train_counts: list[int], batch_size: int) -> dict[str, Any]:
    logits, labels = predict(model, data, batch_size)
    return classification_metrics(logits, labels, train_counts)


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BBNError(f"train.device '{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BBNError(f"train.device '{name}' asks for CUDA but none is available; use train.device=cpu")
    return device


def _checkpoint_path(target: Path) -> tuple[Path, Path]:
    """(checkpoint, folder to write eval.json into) for a run folder or a .pt file."""
    if target.is_dir():
        run = RunDir(target)
        ckpt = run.best if run.best.is_file() else run.last
        return ckpt, run.root
    return target, target.parent.parent if target.parent.name == "checkpoints" else target.parent


def eval_command(target: str | Path, device_name: str = "auto") -> dict[str, Any]:
    """Evaluate a run's best checkpoint (or a given one) on its test set; write eval.json."""
    target = Path(target)
    if not target.exists():
        raise BBNError(f"'{target}' does not exist; pass a run folder or a checkpoint file")
    ckpt_path, out_dir = _checkpoint_path(target)
    payload = load_checkpoint(ckpt_path)
    cfg = build_config(payload["config"])
    data = prepare_data(cfg)
    device = resolve_device(device_name)
    model = create_model(cfg.model.name, data.train.num_classes, data.train.images.shape[1])
    model.load_state_dict(payload["model"])
    model.to(device)
    test = DeviceImages.create(data.test, data.mean, data.std, device)
    result = evaluate(model, test, data.class_counts, cfg.train.eval_batch_size)
    result.update(checkpoint=str(ckpt_path), epoch=payload.get("epoch"),
                  class_counts=data.class_counts, class_names=data.train.class_names,
                  num_params=num_params(model))
    write_json(out_dir / "eval.json", result)
    return result
