"""Networks: the registry of name -> constructor(num_classes, in_channels), filled here by
importing every model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from bbn.errors import BBNError
from bbn.models.bilateral import BilateralModel
from bbn.models import resnet_cifar  # noqa: F401  (registers the CIFAR ResNets, first in the registry)
from bbn.models import backbones  # noqa: F401  (registers the timm/ and torchvision/ families)
from bbn.models.backbones import how_to_get
from bbn.models.resnet50 import init_from_torchvision
from bbn.models.registry import MODELS


def create_model(name: str, num_classes: int, in_channels: int = 3,
                 pretrained: str | Path | None = None, options: dict[str, Any] | None = None) -> nn.Module:
    """Build a registered model (`resnet32`, `bbn_resnet32`, `resnet50`, `bbn_resnet50`) or a
    family member (`timm/ARCH`, `torchvision/ARCH`, `bbn_timm/ARCH`, `bbn_torchvision/ARCH`,
    built with `options`); `pretrained`: a state dict file of the backbone's weights (for
    ResNet-50, torchvision's), which initialises everything but the classifier."""
    build = MODELS.get(name)
    if "/" in name:
        return build(num_classes, in_channels, options, pretrained)
    model = build(num_classes=num_classes, in_channels=in_channels)
    if pretrained is not None:
        init_from_torchvision(model, pretrained)
    return model


def build_model(cfg: Any, num_classes: int, in_channels: int = 3, pretrained: bool = True) -> nn.Module:
    """The model a config's `model` section describes (`pretrained=False`: skip model.pretrained,
    the weights come from elsewhere); with `model.require_pretrained`, `model.pretrained` must be set."""
    if pretrained and cfg.model.require_pretrained and cfg.model.pretrained is None:
        name = cfg.model.name.removeprefix("bbn_")
        raise BBNError(f"model.pretrained is not set and this config fine-tunes pretrained weights "
                       f"(model.require_pretrained=true); {how_to_get(name if '/' in name else 'torchvision/resnet50')} "
                       "and pass it as model.pretrained=PATH, or "
                       "model.require_pretrained=false to train from random initialisation")
    return create_model(cfg.model.name, num_classes, in_channels,
                        pretrained=cfg.model.pretrained if pretrained else None, options=cfg.model.options)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["BilateralModel", "MODELS", "build_model", "create_model", "num_params"]
