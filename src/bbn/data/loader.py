"""Index batches -> image batches: gather uint8 images by index on their device, augment
and normalise there. The whole in-memory dataset lives on the compute device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from bbn.data.augment import Normalize, random_crop_flip
from bbn.data.sources import LabeledImages


@dataclass
class DeviceImages:
    """A `LabeledImages` moved to the compute device, with its normalisation."""

    images: torch.Tensor
    labels: torch.Tensor
    normalize: Normalize
    memory_format: torch.memory_format = torch.contiguous_format

    @classmethod
    def create(cls, data: LabeledImages, mean: Sequence[float], std: Sequence[float],
               device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
               ) -> "DeviceImages":
        return cls(data.images.to(device), data.labels.to(device), Normalize(mean, std, device), memory_format)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def train_batch(self, idx: torch.Tensor, padding: int, flip: bool,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented, normalised images and labels of the images `idx` (a CPU index tensor)."""
        idx = idx.to(self.images.device)
        x = random_crop_flip(self.images[idx], padding, flip, generator)
        return self.normalize(x).contiguous(memory_format=self.memory_format), self.labels[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised, un-augmented batches in order."""
        for start in range(0, len(self), batch_size):
            sl = slice(start, start + batch_size)
            yield self.normalize(self.images[sl]).contiguous(memory_format=self.memory_format), self.labels[sl]
