"""What every training rule offers the trainer, and what the trainer hands it.

One way only: the method plans an epoch as index tensors (`plan`), the trainer gathers and
augments those images into a `Batch` of tensors, and the method's `step` turns the batch
into a loss. A method never sees a dataset.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn

from bbn.config import Config
from bbn.registry import Registry
from bbn.samplers import Plan


class Batch(NamedTuple):
    """One step's augmented, normalised images and their labels, on the compute device:
    stream c (the uniform or only sampler's) and, for paired methods, stream r (the
    re-balancing sampler's)."""

    x_c: torch.Tensor
    y_c: torch.Tensor
    x_r: torch.Tensor | None = None
    y_r: torch.Tensor | None = None

    @classmethod
    def of(cls, streams: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> "Batch":
        """The batch of a step's (images, labels) per stream, in the plan's stream order."""
        return cls(*(t for pair in streams for t in pair))

    def labels(self) -> tuple[torch.Tensor, ...]:
        """The labels of every stream."""
        return tuple(y for y in (self.y_c, self.y_r) if y is not None)


@dataclass(frozen=True)
class StepContext:
    """Where a step stands and the generator of its own draws (Mixup's lambda and mixed
    layer, a stochastic alpha); the generator is keyed by the step, so every process of a
    run and every resumed run draws the same values."""

    epoch: int  # 1-based
    step: int  # 1-based within the epoch
    generator: torch.Generator


@dataclass
class StepResult:
    """A step's loss (to back-propagate), its shown accuracy and how many images it used."""

    loss: torch.Tensor
    accuracy: torch.Tensor
    images: int


class Method(ABC):
    """A training rule: the index batches of an epoch and the loss of one step."""

    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        self.cfg = cfg
        self.labels = labels
        self.num_classes = num_classes

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """Raise BBNError on a name the method reads that is unknown (no data is read)."""

    def check_model(self, model: nn.Module) -> None:
        """Raise BBNError when `model` cannot be trained by this method."""

    @abstractmethod
    def steps_per_epoch(self) -> int:
        """Optimisation steps in one epoch."""

    @abstractmethod
    def plan(self, epoch: int, generator: torch.Generator) -> Plan:
        """The 1-based `epoch`'s steps as index tensors per stream, drawn from `generator`."""

    def logged(self, epoch: int) -> dict[str, float | None]:
        """Per-epoch values to log (BBN: alpha)."""
        return {"alpha": None}

    @abstractmethod
    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepResult:
        """Loss and shown accuracy of one batch (no optimiser work here)."""


METHODS: Registry[type[Method]] = Registry("method")
