"""Index batches -> image batches: gather uint8 images by index on their device, augment
and normalise there. The whole in-memory dataset lives on the compute device.

File-backed datasets (bbn/data/files.py) offer the same interface (`ImageSet`), decoding
their images in DataLoader workers; `create_image_set` picks the one a split needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import torch

from bbn.config import Config
from bbn.data.augment import Normalize, random_crop_flip
from bbn.data.files import FileImages, ImageFiles
from bbn.data.sources import LabeledImages


# One planned step: each stream's image indices (a CPU tensor) with the seed of its augmentation draws.
PlannedStep = Sequence[tuple[torch.Tensor, int]]


class ImageSet(Protocol):
    """What the trainer and the evaluator use of a training or test set."""

    labels: torch.Tensor

    def __len__(self) -> int: ...

    def train_batches(self, steps: Sequence[PlannedStep]) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per step, each stream's augmented, normalised images and labels on the compute
        device; every stream's crops and flips are drawn from its own seed alone."""

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised, un-augmented batches in order."""


@dataclass
class DeviceImages:
    """A `LabeledImages` moved to the compute device, with its normalisation and its
    training augmentation (`padding` zero pixels for the random crop, horizontal flip)."""

    images: torch.Tensor
    labels: torch.Tensor
    normalize: Normalize
    memory_format: torch.memory_format = torch.contiguous_format
    padding: int = 0
    flip: bool = False

    @classmethod
    def create(cls, data: LabeledImages, mean: Sequence[float], std: Sequence[float],
               device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
               padding: int = 0, flip: bool = False) -> "DeviceImages":
        return cls(data.images.to(device), data.labels.to(device), Normalize(mean, std, device), memory_format,
                   padding, flip)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def gather(self, idx: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented, normalised images and labels of the images `idx` (a CPU index tensor),
        the crops and flips drawn from `generator`."""
        idx = idx.to(self.images.device)
        x = random_crop_flip(self.images[idx], self.padding, self.flip, generator)
        return self.normalize(x).contiguous(memory_format=self.memory_format), self.labels[idx]

    def train_batches(self, steps: Sequence[PlannedStep]) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Each step gathered when the loop asks for it (nothing is loaded ahead)."""
        for step in steps:
            yield [self.gather(idx, torch.Generator().manual_seed(seed)) for idx, seed in step]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised, un-augmented batches in order."""
        for start in range(0, len(self), batch_size):
            sl = slice(start, start + batch_size)
            yield self.normalize(self.images[sl]).contiguous(memory_format=self.memory_format), self.labels[sl]


def create_image_set(data: LabeledImages | ImageFiles, cfg: Config, mean: Sequence[float], std: Sequence[float],
                     device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
                     split: str = "train", skip_log: Path | None = None) -> DeviceImages | FileImages:
    """The in-memory set of a source's uint8 images, or the file-backed one of its files
    (which lists unreadable images in `skip_log`, when given)."""
    if isinstance(data, ImageFiles):
        return FileImages(data, cfg, mean, std, device, memory_format, split, skip_log)
    return DeviceImages.create(data, mean, std, device, memory_format, cfg.augment.crop_padding, cfg.augment.flip)
