"""The shape every baseline shares: one network, one batch per step. A baseline picks the
sampler of each epoch and the loss; the defaults (uniform sampler, cross-entropy) are the
plain CE control."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bbn.config import Config
from bbn.errors import BBNError
from bbn.methods.base import METHODS, Batch, Method, StepContext, StepResult
from bbn.models.bilateral import BilateralModel
from bbn.models.registry import counterpart
from bbn.models.resnet_cifar import NormedLinear
from bbn.samplers import REBALANCE_SAMPLERS, Plan, RebalanceSampler, UniformSampler, drawn_batches

# DRW / DRS switch after 160 of 200 epochs (SPEC §6); other schedules keep the fraction.
DEFER_FRACTION = 0.8


def defer_epoch(cfg: Config) -> int:
    """The last epoch of the first phase of a deferred schedule (DRW, DRS)."""
    if cfg.method.defer_epoch is None:
        return round(DEFER_FRACTION * cfg.train.epochs)
    if cfg.method.defer_epoch >= cfg.train.epochs:
        raise BBNError(
            f"method.defer_epoch={cfg.method.defer_epoch} leaves no deferred phase in "
            f"train.epochs={cfg.train.epochs}; use a value below {cfg.train.epochs} or leave it unset"
        )
    return cfg.method.defer_epoch


class SingleBranch(Method):
    """One batch from the epoch's sampler through `model(x)`, then `loss(z, y)`."""

    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(cfg, labels, num_classes)
        self.uniform = UniformSampler(len(labels), cfg.train.batch_size, cfg.train.drop_last)
        self.class_counts = torch.bincount(labels.cpu(), minlength=num_classes)
        self._samplers: dict[str, RebalanceSampler] = {}

    def check_model(self, model: nn.Module) -> None:
        """The baselines train one plain network: refuse the bilateral and cosine models."""
        if isinstance(model, BilateralModel) or isinstance(getattr(model, "classifier", None), NormedLinear):
            raise BBNError(
                f"method '{self.cfg.method.name}' trains the plain network, not "
                f"model.name='{self.cfg.model.name}' (use model.name={counterpart(self.cfg.model.name, False)})"
            )

    def sampler(self, epoch: int) -> str:
        """Name of the epoch's sampler: 'uniform' (each image once) or a re-balancing one."""
        return "uniform"

    def loss(self, z: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        """The training loss of logits `z` for labels `y` at the 1-based `epoch`."""
        return F.cross_entropy(z, y)

    def steps_per_epoch(self) -> int:
        return len(self.uniform)

    def plan(self, epoch: int, generator: torch.Generator) -> Plan:
        """The uniform epoch, or as many batches drawn from the epoch's re-balancing sampler."""
        name = self.sampler(epoch)
        if name == "uniform":
            return [(idx,) for idx in self.uniform.epoch(generator)]
        if name not in self._samplers:
            self._samplers[name] = REBALANCE_SAMPLERS.get(name)(self.labels, self.num_classes, self.cfg.train.epochs)
        drawn = drawn_batches(self._samplers[name], self.steps_per_epoch(), self.cfg.train.batch_size, epoch, generator)
        return [(idx,) for idx in drawn]

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepResult:
        z = model(batch.x_c)
        accuracy = (z.argmax(dim=1) == batch.y_c).float().mean()
        return StepResult(self.loss(z, batch.y_c, ctx.epoch), accuracy, len(batch.y_c))


@METHODS.register("ce")
class CrossEntropy(SingleBranch):
    """The plain cross-entropy control: ResNet-32 fed by the uniform sampler."""
