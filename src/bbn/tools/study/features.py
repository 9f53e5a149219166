"""A trained run's frozen representation: its model, the features of its training and
test sets, and its own classifier for the chosen features.

The features are fixed: the trunk is frozen and evaluated in eval mode (its BatchNorm
uses the stored running statistics) on un-augmented images, so every image always gives
the same feature vector. They are therefore computed once, and stage 2 trains on a
small matrix instead of running the network again — that is what makes it fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bbn.config import Config
from bbn.data.loader import ImageSet, create_image_set
from bbn.errors import BBNError
from bbn.engine.evaluate import infer, load_run as load_checkpoint_run
from bbn.models import BilateralModel
from bbn.models.branches import BRANCHES
from bbn.registry import closest
from bbn.engine.runs import RunDir


@dataclass
class TrainedRun:
    """A finished (or stopped) run loaded from its last.pt with its own config."""

    root: Path
    cfg: Config
    model: nn.Module
    epoch: int
    device: torch.device
    class_counts: list[int]
    train_set: ImageSet
    test_set: ImageSet


@dataclass
class FrozenFeatures:
    """Fixed features (N x D) and labels of the long-tailed training set and the test set,
    and the run's own classifier (W, b) acting on them."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_counts: list[int]
    W: torch.Tensor  # noqa: N815 - paper name
    b: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    @property
    def feature_dim(self) -> int:
        return int(self.train_x.shape[1])


def load_run(path: str | Path) -> TrainedRun:
    """The model of run folder `path` at its last checkpoint, with its data on its device.

    last.pt, not best.pt: the representation the schedule ended with, not one picked on
    the test set."""
    run = RunDir(path)
    if not run.root.is_dir():
        raise BBNError(f"run folder '{run.root}' does not exist; pass a folder written by bbn train")
    loaded = load_checkpoint_run(run.last)
    cfg, data = loaded.cfg, loaded.data
    device = next(loaded.model.parameters()).device
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    return TrainedRun(
        root=run.root, cfg=cfg, model=loaded.model.eval(), epoch=int(loaded.payload.get("epoch", 0)),
        device=device, class_counts=data.class_counts,
        train_set=create_image_set(data.train, cfg, data.mean, data.std, device, split="train"),
        test_set=create_image_set(data.test, cfg, data.mean, data.std, device, split="test"),
    )


def check_branch(model: nn.Module, branch: str | None) -> str | None:
    """`branch` ('cb', 'rb') checked against the model; None for a plain model."""
    if isinstance(model, BilateralModel):
        if branch is None:
            raise BBNError("this run is a BBN model; choose its features with --branch cb (f_c) or rb (f_r)")
        if branch not in BRANCHES:
            hint = closest(branch, list(BRANCHES))
            fix = f"; did you mean '{hint}'?" if hint else ""
            raise BBNError(f"unknown branch '{branch}'; known: cb, rb{fix}")
        return branch
    if branch is not None:
        raise BBNError(f"--branch {branch} needs a BBN model, but this run's model is plain; drop --branch")
    return None


def extract_features(model: nn.Module, data: ImageSet, branch: str | None,
                     batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GAP features of every image of `data` (un-augmented, model in eval mode) and labels:
    `model.features(x)` of a plain model, `model.features(x, branch)` of a BBN model."""
    model_branch = check_branch(model, branch)
    if model_branch is None:
        return infer(model, model.features, data, batch_size)
    return infer(model, lambda x: model.features(x, model_branch), data, batch_size)


def own_classifier(model: nn.Module, branch: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of the run's classifier for the chosen features: the plain model's linear
    layer, or BBN's W_c / W_r with the shared bias (the BBN-CB / BBN-RB classifiers)."""
    model_branch = check_branch(model, branch)
    if model_branch is None:
        layer: Any = model.classifier
        return layer.weight.detach().clone(), layer.bias.detach().clone()
    W, b = model.branch_classifier(model_branch)  # noqa: N806 - paper name
    return W.detach().clone(), b.detach().clone()


def frozen_features(run: TrainedRun, branch: str | None = None) -> FrozenFeatures:
    """The run's fixed training and test features for `branch` and its own classifier."""
    batch = run.cfg.train.eval_batch_size
    train_x, train_y = extract_features(run.model, run.train_set, branch, batch)
    test_x, test_y = extract_features(run.model, run.test_set, branch, batch)
    W, b = own_classifier(run.model, branch)  # noqa: N806 - paper name
    return FrozenFeatures(train_x, train_y, test_x, test_y, run.class_counts, W, b)
