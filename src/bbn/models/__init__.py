"""Networks: the registry of name -> constructor(num_classes, in_channels), filled here by
importing every model file."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from bbn.models.bilateral import BilateralModel
from bbn.models import resnet_cifar  # noqa: F401  (registers the CIFAR ResNets, first in the registry)
from bbn.models.resnet50 import init_from_torchvision
from bbn.models.registry import MODELS


def create_model(name: str, num_classes: int, in_channels: int = 3,
                 pretrained: str | Path | None = None) -> nn.Module:
    """Build a registered model (`resnet32`, `bbn_resnet32`, `resnet50`, `bbn_resnet50`);
    `pretrained`: a torchvision ResNet-50 state dict that initialises a ResNet-50's trunk."""
    model = MODELS.get(name)(num_classes=num_classes, in_channels=in_channels)
    if pretrained is not None:
        init_from_torchvision(model, pretrained)
    return model


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["BilateralModel", "MODELS", "create_model", "num_params"]
