"""ResNet-50 (iNaturalist) and its BBN variant (SPEC §3), in torchvision's layout.

7x7 stem conv 64 (stride 2), BN, ReLU, 3x3 max-pool; stages layer1..layer4 of torchvision
Bottlenecks [3, 4, 6, 3] (64, 128, 256, 512 planes, x4 expansion; the stride sits on the 3x3
conv; `downsample.0/1` = 1x1 conv + BN where the shape changes). The BBN variant keeps 2
shared blocks in layer4 and adds `cb_block` and `rb_block`, Bottlenecks 2048 -> 512 -> 2048.
Parameter names (`backbone.layer4.0.conv2.weight`, `backbone.cb_block.bn3.bias`, ...) are
the reference's, so its checkpoints load as they are. Initialisation is the reference's:
PyTorch's default layer init everywhere (convs and the classifier kaiming_uniform(a=sqrt(5)),
i.e. U(+-1/sqrt(fan_in)); BN weight 1 and bias 0), not torchvision's fan-out Kaiming.

`init_from_torchvision` starts the trunk from a torchvision ResNet-50 state dict (ImageNet
weights, say): every trunk weight by its torchvision name, and for the BBN variant both
`cb_block` and `rb_block` from torchvision's `layer4.2`, the block they replace. The
classifier keeps its fresh initialisation (its classes are not ImageNet's).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torchvision.models.resnet import Bottleneck

from bbn.errors import BBNError, first_line
from bbn.models.bilateral import BilateralModel, TrunkAndBlocks
from bbn.models.registry import MODELS

EXPANSION = Bottleneck.expansion  # 4
STAGE_BLOCKS = (3, 4, 6, 3)
FEATURE_DIM = 512 * EXPANSION  # 2048
BRANCH_BLOCKS = ("cb_block", "rb_block")


def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """`blocks` Bottlenecks; the first one changes the shape (stride, channels) with a
    1x1 conv + BN shortcut named `downsample`."""
    downsample = None
    if stride != 1 or inplanes != planes * EXPANSION:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(planes * EXPANSION))
    layers = [Bottleneck(inplanes, planes, stride, downsample)]
    layers += [Bottleneck(planes * EXPANSION, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50Backbone(TrunkAndBlocks, nn.Module):
    """Stem and layer1..layer4 (layer4 with `layer4_blocks` blocks); for the BBN variant
    (`branch_blocks=True`) also `cb_block` and `rb_block`."""

    def __init__(self, in_channels: int = 3, layer4_blocks: int = 3, branch_blocks: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, STAGE_BLOCKS[0], 1)
        self.layer2 = _stage(256, 128, STAGE_BLOCKS[1], 2)
        self.layer3 = _stage(512, 256, STAGE_BLOCKS[2], 2)
        self.layer4 = _stage(1024, 512, layer4_blocks, 2)
        if branch_blocks:
            self.cb_block = Bottleneck(FEATURE_DIM, 512)
            self.rb_block = Bottleneck(FEATURE_DIM, 512)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The shared feature map (B, 2048, H/32, W/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ResNet50(nn.Module):
    """Plain ResNet-50 with a linear classifier on the 2048-d GAP feature (the baselines'
    network at iNaturalist scale)."""

    feature_dim = FEATURE_DIM

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.backbone = ResNet50Backbone(in_channels, layer4_blocks=STAGE_BLOCKS[3])
        self.classifier = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """GAP feature vector f (B, 2048)."""
        return self.backbone.trunk(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("resnet50", reads={"model.pretrained", "model.require_pretrained"})
def resnet50(num_classes: int, in_channels: int = 3) -> ResNet50:
    return ResNet50(num_classes, in_channels)


@MODELS.register("bbn_resnet50", reads={"model.pretrained", "model.require_pretrained"})
def bbn_resnet50(num_classes: int, in_channels: int = 3) -> BilateralModel:
    backbone = ResNet50Backbone(in_channels, layer4_blocks=STAGE_BLOCKS[3] - 1, branch_blocks=True)
    return BilateralModel(backbone, feature_dim=FEATURE_DIM, num_classes=num_classes)


def _torchvision_name(name: str) -> str:
    """Our backbone parameter name -> the torchvision ResNet-50 name it starts from."""
    block, dot, rest = name.partition(".")
    if block in BRANCH_BLOCKS and dot:
        return f"layer4.{STAGE_BLOCKS[3] - 1}.{rest}"
    return name


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    fix = "give a torchvision ResNet-50 state dict saved with torch.save(model.state_dict(), PATH)"
    if not path.is_file():
        raise BBNError(f"model.pretrained '{path}' not found; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise BBNError(f"model.pretrained '{path}' cannot be read ({first_line(exc)}); {fix}") from None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise BBNError(f"model.pretrained '{path}' is not a state dict of named tensors; {fix}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def init_from_torchvision(model: nn.Module, path: str | Path) -> None:
    """Load a torchvision ResNet-50 state dict into the trunk of `model` (resnet50 or
    bbn_resnet50); `cb_block` and `rb_block` both start from torchvision's `layer4.2`.
    The classifier is left as it is; a file that is not a ResNet-50 is a BBNError."""
    path = Path(path)
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, ResNet50Backbone):
        raise BBNError(f"model.pretrained initialises resnet50 and bbn_resnet50 only, not "
                       f"{type(model).__name__}; drop model.pretrained or use one of those models")
    state = _read_state_dict(path)
    wanted = backbone.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for name, ours in wanted.items():
        source = _torchvision_name(name)
        if source not in state:
            raise BBNError(f"model.pretrained '{path}' has no '{source}'; it is not a torchvision ResNet-50 "
                           "state dict (save one with torch.save(torchvision.models.resnet50(...).state_dict(), PATH))")
        if state[source].shape != ours.shape:
            fix = (f"the pretrained stem takes {state[source].shape[1]}-channel images, the data has "
                   f"{ours.shape[1]}; use RGB data or drop model.pretrained" if source == "conv1.weight"
                   else "it is not a torchvision ResNet-50 state dict")
            raise BBNError(f"model.pretrained '{path}': '{source}' has shape {tuple(state[source].shape)}, "
                           f"the model needs {tuple(ours.shape)}; {fix}")
        mapped[name] = state[source]
    used = {_torchvision_name(name) for name in wanted} | {"fc.weight", "fc.bias"}
    extra = sorted(set(state) - used)
    if extra:
        raise BBNError(f"model.pretrained '{path}' has '{extra[0]}', which ResNet-50 does not; "
                       "it is not a torchvision ResNet-50 state dict")
    backbone.load_state_dict(mapped)
