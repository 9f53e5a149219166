"""The Python API: `bbn.load` (a trained network ready for images) and `bbn.build_model`
(a registered network), reached lazily from `bbn` so that `import bbn` stays light."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from bbn.devices import resolve_device
from bbn.models import create_model
from bbn.tools.predict import Predictor, load_predictor


def load(run_or_file: str | Path, device: str = "auto", precision: str | None = None) -> Predictor:
    """The predictor of a run folder, a checkpoint, or a file `bbn export` wrote (ONNX runs on
    the CPU whatever `device` says): `.classes` are its class names, `.predict(images, topk=5)`
    its top-k per image (file paths or folders, PIL images, uint8 (C, H, W) tensors). A
    checkpoint's network runs in `precision` (default: its train.precision as it resolves on
    `device`; `"fp32"` for exact fp32 outputs)."""
    return load_predictor(run_or_file, resolve_device(device), precision)


def build_model(name: str, num_classes: int, in_channels: int = 3, options: dict[str, Any] | None = None,
                pretrained: str | Path | None = None) -> nn.Module:
    """A registered network (`resnet32`, `bbn_resnet32`, `resnet50`, `bbn_resnet50`, `[bbn_]timm/ARCH`,
    `[bbn_]torchvision/ARCH` with `options`), its backbone initialised from the state dict
    file `pretrained` when given (`bbn.models.create_model`)."""
    return create_model(name, num_classes, in_channels, pretrained=pretrained, options=options)
