"""BBN's training step: Algorithm 1 of the paper, two passes through the shared trunk."""

from __future__ import annotations

import torch
import torch.nn as nn

from bbn.config import Config
from bbn.errors import BBNError
from bbn.losses import cumulative_accuracy, cumulative_loss
from bbn.methods.base import METHODS, Batch, Method, StepContext, StepResult
from bbn.methods.cumulative import ADAPTORS, cumulative_alpha, is_stochastic
from bbn.models.bilateral import BilateralModel
from bbn.models.registry import counterpart
from bbn.samplers import REBALANCE_SAMPLERS, BBNPairSampler, Plan, UniformSampler


@METHODS.register("bbn", reads={"method.adaptor", "method.rebalance_sampler", "method.t_max"})
class BBN(Method):
    """Conventional branch on uniform samples, re-balancing branch on reversed samples,
    mixed by the cumulative-learning alpha."""

    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(cfg, labels, num_classes)
        self.check_config(cfg)
        uniform = UniformSampler(len(labels), cfg.train.batch_size, cfg.train.drop_last)
        rebalance = REBALANCE_SAMPLERS.get(cfg.method.rebalance_sampler)(labels, num_classes, cfg.train.epochs)
        self.sampler = BBNPairSampler(uniform, rebalance)

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        ADAPTORS.get(cfg.method.adaptor)
        REBALANCE_SAMPLERS.get(cfg.method.rebalance_sampler)

    def check_model(self, model: nn.Module) -> None:
        if not isinstance(model, BilateralModel):
            raise BBNError(
                f"method 'bbn' needs a bilateral model; model.name='{self.cfg.model.name}' is not one "
                f"(use model.name={counterpart(self.cfg.model.name, True)})"
            )

    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    def plan(self, epoch: int, generator: torch.Generator) -> Plan:
        """(idx_c, idx_r) per step: the uniform sampler's batch and as many re-balancing draws."""
        return self.sampler.plan(epoch, generator)

    def logged(self, epoch: int) -> dict[str, float | None]:
        if is_stochastic(self.cfg.method.adaptor):
            return {"alpha": None}
        return {"alpha": cumulative_alpha(self.cfg.method.adaptor, epoch, self.cfg.train.epochs, None, self.cfg.method.t_max)}

    def step(self, model: BilateralModel, batch: Batch, ctx: StepContext) -> StepResult:
        alpha = cumulative_alpha(self.cfg.method.adaptor, ctx.epoch, self.cfg.train.epochs, ctx.generator,
                                 self.cfg.method.t_max)
        f_c = model.features(batch.x_c, "cb")  # uniform sampler
        f_r = model.features(batch.x_r, "rb")  # reversed sampler
        z = model.logits(f_c, f_r, alpha)
        loss = cumulative_loss(z, batch.y_c, batch.y_r, alpha)
        return StepResult(loss, cumulative_accuracy(z, batch.y_c, batch.y_r, alpha), len(batch.y_c) + len(batch.y_r))
