"""Networks: a registry of name -> constructor(num_classes, in_channels)."""

from __future__ import annotations

import torch.nn as nn

from bbn.models.bilateral import BilateralModel
from bbn.models.resnet_cifar import MODELS


def create_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a registered model (`resnet32`, `bbn_resnet32`)."""
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["BilateralModel", "MODELS", "create_model", "num_params"]
