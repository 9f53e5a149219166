"""Data sources -> `LabeledImages`: one in-memory form for every dataset.

A source returns a train and a test split as uint8 image tensors (N, C, H, W), int64
labels and class names, plus the normalisation statistics it is usually trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from bbn.config import DataConfig
from bbn.errors import BBNError
from bbn.registry import Registry

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
    source loads, and what `prepare_data` makes of it (the long-tailed training set).
    File-backed sources give `ImageFiles` (paths, labels, class names) instead of images."""

    train: LabeledImages | ImageFiles
    test: LabeledImages | ImageFiles
    mean: tuple[float, ...]
    std: tuple[float, ...]

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


SOURCES: Registry[Callable[[DataConfig], Splits]] = Registry("data source")

# The data keys a source reads beyond the ones every source reads (data.source, profile,
# imbalance_ratio, subset_seed, n_max, test_max_per_class, image_size): each source declares
# them when it registers, so a key the chosen source would ignore is refused.
IN_MEMORY_READS = frozenset({"augment.crop_padding"})  # the padded random crop of in-memory images
FILE_READS = frozenset({"data.root", "data.resize_size", "data.workers", "data.strict"})  # decoded files
ANNOTATION_READS = FILE_READS | {"data.train_file", "data.test_file"}  # files listed in annotation files


def load_source(cfg: DataConfig) -> Splits:
    """The train/test splits named by `cfg.source`."""
    # CIFAR, the arrays and the file sources register themselves on import; imported here
    # so the registry is complete.
    from bbn.data import arrays, cifar, folder, inat, lists  # noqa: F401

    return SOURCES.get(cfg.source)(cfg)


# scikit-learn's digits: 1,797 8x8 images with values 0..16, about 180 per class.
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3759,)


@SOURCES.register("digits", reads={"data.test_per_class", *IN_MEMORY_READS})
def load_digits(cfg: DataConfig) -> Splits:
    """scikit-learn's digits, shipped with the package: no download.

    A seeded, balanced test split of `test_per_class` images per class is held out; the
    rest is the training pool. Pixels are scaled from 0..16 to 0..255.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    images = torch.from_numpy(pixels).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    names = [str(n) for n in bunch.target_names]
    counts = torch.bincount(labels, minlength=len(names))
    if int(counts.min()) <= cfg.test_per_class:
        raise BBNError(
            f"data.test_per_class={cfg.test_per_class} leaves no training images for some digit "
            f"class (smallest class has {int(counts.min())}); use a value below {int(counts.min())}"
        )
    test_idx = [int(i) for idx in shuffled_per_class(bunch.target, len(names), cfg.subset_seed)
                for i in idx[: cfg.test_per_class]]
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[torch.tensor(sorted(test_idx))] = True
    everything = LabeledImages(images.contiguous(), labels, names)
    return Splits(
        train=everything.subset(torch.nonzero(~is_test).flatten()),
        test=everything.subset(torch.nonzero(is_test).flatten()),
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
    )
