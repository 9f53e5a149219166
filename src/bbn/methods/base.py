"""What every training rule offers the trainer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn

from bbn.config import Config
from bbn.data.loader import DeviceImages
from bbn.registry import Registry


@dataclass
class StepResult:
    """A step's loss (to back-propagate), its shown accuracy and how many images it used."""

    loss: torch.Tensor
    accuracy: torch.Tensor
    images: int


class Method(ABC):
    """A training rule: which batches an epoch draws and the loss of one step."""

    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        self.cfg = cfg
        self.labels = labels
        self.num_classes = num_classes

    def check_model(self, model: nn.Module) -> None:
        """Raise BBNError when `model` cannot be trained by this method."""

    @abstractmethod
    def steps_per_epoch(self) -> int:
        """Optimisation steps in one epoch."""

    @abstractmethod
    def epoch_batches(self, generator: torch.Generator) -> Iterator[Any]:
        """The epoch's batches of image indices, drawn from `generator`."""

    def start_epoch(self, epoch: int, generator: torch.Generator) -> dict[str, float | None]:
        """Per-epoch values to log (e.g. alpha)."""
        return {"alpha": None}

    @abstractmethod
    def step(self, model: nn.Module, data: DeviceImages, batch: Any, generator: torch.Generator) -> StepResult:
        """Loss and shown accuracy of one batch (no optimiser work here)."""


METHODS: Registry[type[Method]] = Registry("method")
