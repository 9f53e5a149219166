"""The bilateral-branch model (SPEC §1-§2): a weight-shared trunk, one last block per
branch, and ONE linear classifier over cat(f_c, f_r).

`features(x, branch)` gives f_c or f_r; `logits(f_c, f_r, alpha)` is the cumulative
mixing; `forward(x)` is inference (alpha = 0.5, the same image through both branches).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from bbn.models.branches import BRANCHES


class TrunkAndBlocks:
    """The branch features of a backbone that offers `trunk(x)`, `cb_block` and `rb_block`
    (ResNet-32, ResNet-50): block, then global average pooling."""

    trunk: Callable[[torch.Tensor], torch.Tensor]
    cb_block: nn.Module
    rb_block: nn.Module

    def branch_features(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        if branch == "cb":
            block = self.cb_block
        elif branch == "rb":
            block = self.rb_block
        else:
            raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
        return block(self.trunk(x)).mean(dim=(2, 3))

    def both_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.trunk(x)
        return self.cb_block(shared).mean(dim=(2, 3)), self.rb_block(shared).mean(dim=(2, 3))


class BilateralModel(nn.Module):
    """`backbone` offers `branch_features(x, branch)` and `both_features(x)` (TrunkAndBlocks,
    or bbn.models.backbones.Branched for any timm / torchvision network); `classifier` is the
    single Linear(2D, C) whose first D input columns are W_c and last D are W_r."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(2 * feature_dim, num_classes)

    def features(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        """f_c (branch='cb', the conventional branch) or f_r ('rb', re-balancing): trunk, branch block, pooling."""
        return self.backbone.branch_features(x, branch)

    def features_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f_c and f_r of the SAME images, sharing one trunk pass (inference)."""
        return self.backbone.both_features(x)
    def logits(self, f_c: torch.Tensor, f_r: torch.Tensor, alpha: float) -> torch.Tensor:
        """z = 2*alpha*W_c f_c + 2*(1-alpha)*W_r f_r + b: the classifier applied to
        2 * cat(alpha f_c, (1 - alpha) f_r) (SPEC §2; the factor 2 keeps training and
        inference logits on one scale)."""
        return self.classifier(2.0 * torch.cat((alpha * f_c, (1.0 - alpha) * f_r), dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference logits: alpha = 0.5, i.e. W_c f_c + W_r f_r + b of the same image."""
        f_c, f_r = self.features_both(x)
        return self.logits(f_c, f_r, 0.5)

    @property
    def W_c(self) -> torch.Tensor:  # noqa: N802 - paper name
        return self.classifier.weight[:, : self.feature_dim]

    @property
    def W_r(self) -> torch.Tensor:  # noqa: N802 - paper name
        return self.classifier.weight[:, self.feature_dim :]

    def branch_classifier(self, branch: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) of one branch alone: (W_c, b) for BBN-CB, (W_r, b) for BBN-RB."""
        return (self.W_c if branch == "cb" else self.W_r), self.classifier.bias

    def branch_logits(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        """BBN-CB (W_c f_c + b) or BBN-RB (W_r f_r + b) single-branch logits."""
        w, b = self.branch_classifier(branch)
        return self.features(x, branch) @ w.t() + b
