"""Data sources -> `LabeledImages`: one in-memory form for every dataset.

A source returns a train and a test split as uint8 image tensors (N, C, H, W), int64
labels and class names, plus the normalisation statistics it is usually trained with.
The sources register in `SOURCES` (bbn.data.registry, re-exported here); bbn.data.catalog
imports them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from bbn.config import DataConfig
from bbn.data.registry import SOURCES
from bbn.errors import BBNError

if TYPE_CHECKING:
    from bbn.data.files import ImageFiles


class ClassLabels:
    """What every split offers whatever holds its images (tensors in memory, or files): int64
    labels in [0, C), the C class names, and the counts N_i."""

    labels: torch.Tensor
    class_names: list[str]

    def _check_label_range(self) -> None:
        c = len(self.class_names)
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= c):
            bad = int(self.labels[(self.labels < 0) | (self.labels >= c)][0])
            raise BBNError(f"label {bad} is outside [0, {c}) for {c} class names; fix the labels or the class list")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> list[int]:
        """N_i: the number of images of each class."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()


@dataclass(frozen=True)
class LabeledImages(ClassLabels):
    """uint8 images (N, C, H, W), int64 labels (N,) in [0, C), and the C class names."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise BBNError(
                f"images must be a uint8 tensor (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise BBNError(
                f"labels must be int64 with one per image ({self.images.shape[0]}), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )
        self._check_label_range()

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: torch.Tensor | Sequence[int]) -> "LabeledImages":
        idx = torch.as_tensor(index, dtype=torch.int64)
        return LabeledImages(self.images[idx], self.labels[idx], list(self.class_names))


@dataclass(frozen=True)
class Splits:
    """Train and test splits and their normalisation (per channel, 0..1 scale): what a
    source loads, and what `prepare_data` makes of it (the long-tailed training set, and the
    validation split held out of it with data.val_per_class). File-backed sources give
    `ImageFiles` (paths, labels, class names) instead of images."""

    train: LabeledImages | ImageFiles
    test: LabeledImages | ImageFiles
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val: LabeledImages | ImageFiles | None = None

    @property
    def class_counts(self) -> list[int]:
        """N_i of the training split."""
        return self.train.class_counts()


def shuffled_per_class(labels: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    """Each class's image indices in a seeded random order (classes shuffled in turn from one
    generator): the first k of each are a seeded per-class subset."""
    rng = np.random.RandomState(seed)
    order = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        order.append(idx)
    return order


def load_source(cfg: DataConfig) -> Splits:
    """The train/test splits named by `cfg.source` (every source registered when bbn.data
    was imported: bbn.data.catalog)."""
    return SOURCES.get(cfg.source)(cfg)
