"""ResNet-32 for CIFAR and its BBN variant (SPEC §3).

3x3 conv 3->16, BN, ReLU; three stages of 5 BasicBlocks (16, 32, 64 channels, strides
1, 2, 2) with the "option A" shortcut; Kaiming-normal init of conv and linear weights.
The BBN variant keeps 4 shared blocks in stage 3 and adds `cb_block` and `rb_block`.
Module names follow the reference layout (`backbone.layer3.0.conv1.weight`, ...).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from bbn.models.bilateral import BilateralModel
from bbn.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal weights for every conv and linear layer (the reference's init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


class ShortcutA(nn.Module):
    """Option A: stride-2 subsampling plus zero-padding of the new channels (no weights)."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CifarStem(nn.Module):
    """conv1/bn1 and stages 1-3 of the CIFAR ResNet, `stage3_blocks` blocks in stage 3."""

    def __init__(self, in_channels: int, stage3_blocks: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _stage(16, 16, 5, 1)
        self.layer2 = _stage(16, 32, 5, 2)
        self.layer3 = _stage(32, 64, stage3_blocks, 2)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))


class ResNet32(nn.Module):
    """Plain ResNet-32 (0.46 M parameters): the CE baseline's network."""

    feature_dim = 64

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.backbone = CifarStem(in_channels, stage3_blocks=5)
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        kaiming_init(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """GAP feature vector f (B, 64)."""
        return self.backbone.trunk(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BBNResNet32Backbone(CifarStem):
    """Shared trunk (stage 3 with 4 blocks) plus one last BasicBlock per branch."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__(in_channels, stage3_blocks=4)
        self.cb_block = BasicBlock(64, 64)
        self.rb_block = BasicBlock(64, 64)


@MODELS.register("resnet32")
def resnet32(num_classes: int, in_channels: int = 3) -> ResNet32:
    return ResNet32(num_classes, in_channels)


@MODELS.register("bbn_resnet32")
def bbn_resnet32(num_classes: int, in_channels: int = 3) -> BilateralModel:
    model = BilateralModel(BBNResNet32Backbone(in_channels), feature_dim=64, num_classes=num_classes)
    kaiming_init(model)
    return model
