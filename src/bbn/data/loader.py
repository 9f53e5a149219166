"""Index batches -> image batches: gather uint8 images by index on their device, augment
and normalise there. The whole in-memory dataset lives on the compute device.

File-backed datasets (bbn/data/files.py) offer the same interface (`ImageSet`), decoding
their images in DataLoader workers; `create_image_set` picks the one a split needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

import torch

from bbn.config import Config
from bbn.data.augment import Normalize, random_crop_flip
from bbn.data.files import FileImages, ImageFiles
from bbn.data.sources import LabeledImages


class ImageSet(Protocol):
    """What the trainer, the methods and the evaluator use of a training or test set."""

    labels: torch.Tensor

    def __len__(self) -> int: ...

    def plan_epoch(self, batches: Iterable[Any], steps: int | None, generator: torch.Generator) -> Iterator[Any]:
        """The epoch's index batches, as the training loop is to iterate them (a set that
        loads ahead starts loading them here)."""

    def train_batch(self, idx: torch.Tensor, padding: int, flip: bool,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def set_skip_log(self, path: Path | None) -> None:
        """Where to list images that could not be read."""


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

    def plan_epoch(self, batches: Iterable[Any], steps: int | None, generator: torch.Generator) -> Iterator[Any]:
        """The batches unchanged: images are gathered when a step asks (no draws here)."""
        return iter(batches)

    def set_skip_log(self, path: Path | None) -> None:
        """In-memory images are all readable: nothing to list."""


def create_image_set(data: LabeledImages | ImageFiles, cfg: Config, mean: Sequence[float], std: Sequence[float],
                     device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
                     split: str = "train") -> DeviceImages | FileImages:
    """The in-memory set of a source's uint8 images, or the file-backed one of its files."""
    if isinstance(data, ImageFiles):
        return FileImages(data, cfg, mean, std, device, memory_format, split)
    return DeviceImages.create(data, mean, std, device, memory_format)
