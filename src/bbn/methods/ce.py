"""The plain cross-entropy baseline: ResNet-32 fed by the uniform sampler (the control)."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from bbn.config import Config
from bbn.data.loader import DeviceImages
from bbn.data.samplers import UniformSampler
from bbn.methods.base import METHODS, Method, StepResult


@METHODS.register("ce")
class CrossEntropy(Method):
    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(cfg, labels, num_classes)
        self.sampler = UniformSampler(len(labels), cfg.train.batch_size, cfg.train.drop_last)

    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    def epoch_batches(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        return self.sampler.epoch(generator)

    def step(self, model: nn.Module, data: DeviceImages, batch: torch.Tensor,
             generator: torch.Generator) -> StepResult:
        aug = self.cfg.augment
        x, y = data.train_batch(batch, aug.crop_padding, aug.flip, generator)
        z = model(x)
        accuracy = (z.argmax(dim=1) == y).float().mean()
        return StepResult(F.cross_entropy(z, y), accuracy, len(y))
