"""BBN's training step: Algorithm 1 of the paper, two passes through the shared trunk."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn

from bbn.config import Config
from bbn.data.loader import DeviceImages
from bbn.data.samplers import REBALANCE_SAMPLERS, BBNPairSampler, UniformSampler
from bbn.errors import BBNError
from bbn.losses import cumulative_accuracy, cumulative_loss
from bbn.methods.base import METHODS, Method, StepResult
from bbn.methods.cumulative import ADAPTORS, cumulative_alpha, is_stochastic
from bbn.models.bilateral import BilateralModel


@METHODS.register("bbn", reads={"method.adaptor", "method.rebalance_sampler"})
class BBN(Method):
    """Conventional branch on uniform samples, re-balancing branch on reversed samples,
    mixed by the cumulative-learning alpha."""

    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(cfg, labels, num_classes)
        ADAPTORS.get(cfg.method.adaptor)  # fail early on an unknown name
        uniform = UniformSampler(len(labels), cfg.train.batch_size, cfg.train.drop_last)
        rebalance = REBALANCE_SAMPLERS.get(cfg.method.rebalance_sampler)(labels, num_classes)
        self.sampler = BBNPairSampler(uniform, rebalance)
        self.epoch = 1

    def check_model(self, model: nn.Module) -> None:
        if not isinstance(model, BilateralModel):
            raise BBNError(
                f"method 'bbn' needs a bilateral model; model.name='{self.cfg.model.name}' is not one "
                "(use model.name=bbn_resnet32)"
            )

    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    def epoch_batches(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.sampler.epoch(generator)

    def start_epoch(self, epoch: int, generator: torch.Generator) -> dict[str, float | None]:
        self.epoch = epoch
        if is_stochastic(self.cfg.method.adaptor):
            return {"alpha": None}
        return {"alpha": self._alpha(generator)}

    def _alpha(self, generator: torch.Generator) -> float:
        return cumulative_alpha(self.cfg.method.adaptor, self.epoch, self.cfg.train.epochs, generator)

    def step(self, model: BilateralModel, data: DeviceImages,
             batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator) -> StepResult:
        aug = self.cfg.augment
        idx_c, idx_r = batch
        alpha = self._alpha(generator)
        x_c, y_c = data.train_batch(idx_c, aug.crop_padding, aug.flip, generator)  # uniform sampler
        x_r, y_r = data.train_batch(idx_r, aug.crop_padding, aug.flip, generator)  # reversed sampler
        f_c = model.features(x_c, "cb")
        f_r = model.features(x_r, "rb")
        z = model.logits(f_c, f_r, alpha)
        loss = cumulative_loss(z, y_c, y_r, alpha)
        return StepResult(loss, cumulative_accuracy(z, y_c, y_r, alpha), len(y_c) + len(y_r))
