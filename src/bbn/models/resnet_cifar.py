"""ResNet-32 for CIFAR and its BBN variant (SPEC §3).

3x3 conv 3->16, BN, ReLU; three stages of 5 BasicBlocks (16, 32, 64 channels, strides
1, 2, 2) with the "option A" shortcut. Initialisation is the reference's: Kaiming-normal
(fan-in) convolution weights in the backbone, BN weight 1 and bias 0, and a classifier built
after the backbone's init, so it keeps nn.Linear's default (U(+-1/sqrt(fan_in)) weight and
bias).
The BBN variant keeps 4 shared blocks in stage 3 and adds `cb_block` and `rb_block`;
the cosine variant (LDAM-DRW's network) swaps the linear classifier for `NormedLinear`.
Module names follow the reference layout (`backbone.layer3.0.conv1.weight`, ...).
"""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from bbn.models.bilateral import BilateralModel, TrunkAndBlocks
from bbn.models.registry import MODELS


def kaiming_init(backbone: nn.Module) -> None:
    """Kaiming-normal (fan-in) weights for every conv of a backbone (the reference's
    backbone init). Classifiers are built after it and keep nn.Linear's default init."""
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
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
        kaiming_init(self.backbone)
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """GAP feature vector f (B, 64)."""
        return self.backbone.trunk(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    # Split points of the forward pass (Manifold Mixup): h_0 is the input image and h_k
    # the output of stage k (k = 1: conv1/bn1/ReLU + layer1, k = 2: layer2, k = 3: layer3).
    num_stages = 3

    def _stage(self, k: int, h: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        if k == 1:
            return b.layer1(F.relu(b.bn1(b.conv1(h))))
        return (b.layer2 if k == 2 else b.layer3)(h)

    def _check_split(self, k: int) -> None:
        if not 0 <= k <= self.num_stages:
            raise ValueError(f"split point k must be in 0..{self.num_stages}, got {k}")

    def hidden(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """h_k: the input itself (k = 0) or the output of stage k (layer1..layer3)."""
        self._check_split(k)
        for stage in range(1, k + 1):
            x = self._stage(stage, x)
        return x

    def forward_from(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Logits from h_k: the rest of `forward`, so forward_from(hidden(x, k), k) == forward(x)."""
        self._check_split(k)
        for stage in range(k + 1, self.num_stages + 1):
            h = self._stage(stage, h)
        return self.classifier(h.mean(dim=(2, 3)))


class NormedLinear(nn.Module):
    """Cosine classifier (LDAM's `NormedLinear`): z_j = <f / |f|, w_j / |w_j|>, in [-1, 1],
    no bias. `weight` is (classes, features) like nn.Linear's; each row starts uniform(-1, 1)
    and is rescaled to unit norm, as the LDAM code does to its columns."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        w = torch.empty(out_features, in_features).uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)
        self.weight = nn.Parameter(w)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f, dim=1) @ F.normalize(self.weight, dim=1).t()


class CosineResNet32(ResNet32):
    """ResNet-32 with the cosine classifier: the network LDAM-DRW trains."""

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__(num_classes, in_channels)
        self.classifier = NormedLinear(self.feature_dim, num_classes)


class BBNResNet32Backbone(TrunkAndBlocks, CifarStem):
    """Shared trunk (stage 3 with 4 blocks) plus one last BasicBlock per branch."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__(in_channels, stage3_blocks=4)
        self.cb_block = BasicBlock(64, 64)
        self.rb_block = BasicBlock(64, 64)


@MODELS.register("resnet32")
def resnet32(num_classes: int, in_channels: int = 3) -> ResNet32:
    return ResNet32(num_classes, in_channels)


@MODELS.register("resnet32_cosine")
def resnet32_cosine(num_classes: int, in_channels: int = 3) -> CosineResNet32:
    return CosineResNet32(num_classes, in_channels)


@MODELS.register("bbn_resnet32")
def bbn_resnet32(num_classes: int, in_channels: int = 3) -> BilateralModel:
    backbone = BBNResNet32Backbone(in_channels)
    kaiming_init(backbone)
    return BilateralModel(backbone, feature_dim=64, num_classes=num_classes)
