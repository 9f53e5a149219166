"""The Mixup family of baselines (SPEC §6), on the plain ResNet-32.

* `mixup` (Zhang et al. 2018): images mixed with a permutation of their own batch.
* `manifold_mixup` (Verma et al. 2019): the same mixing at a hidden state h_k, k drawn
  per batch from {0: the input, 1: after layer1, 2: after layer2}.
* `manifold_mixup_two`: Manifold Mixup of a uniform batch with a reversed-sampler batch,
  element i with element i.

One lam ~ Beta(a, a) per batch (a = `method.mixup_alpha`); the loss is
lam * CE(z, y_a) + (1 - lam) * CE(z, y_b). Every draw comes from the step's generator
(`StepContext.generator`), in the order: lam, k (manifold variants), permutation
(one-sampler variants).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bbn.config import Config
from bbn.errors import BBNError
from bbn.losses import cumulative_accuracy, mixup_loss
from bbn.methods.base import METHODS, Batch, StepContext, StepResult
from bbn.methods.draws import beta_draw
from bbn.methods.single import SingleBranch
from bbn.models.resnet_cifar import ResNet32
from bbn.samplers import BBNPairSampler, Plan, reversed_sampler

# Manifold Mixup's eligible layers for a CIFAR ResNet: the input, after stage 1, after stage 2
# (the choice of the Manifold Mixup authors' CIFAR networks; stage 3 feeds the classifier).
MANIFOLD_LAYERS = (0, 1, 2)


def mixup_lambda(a: float, generator: torch.Generator) -> float:
    """lam ~ Beta(a, a), reproducible from `generator`."""
    return beta_draw(a, a, generator)


def mix_layer(generator: torch.Generator) -> int:
    """k drawn uniformly from MANIFOLD_LAYERS."""
    i = int(torch.randint(0, len(MANIFOLD_LAYERS), (1,), generator=generator))
    return MANIFOLD_LAYERS[i]


def mix(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    """The mixed input or hidden state lam * a + (1 - lam) * b."""
    return lam * a + (1.0 - lam) * b


def _permutation(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randperm(n, generator=generator).to(device)


def _result(z: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float, images: int) -> StepResult:
    return StepResult(mixup_loss(z, y_a, y_b, lam), cumulative_accuracy(z, y_a, y_b, lam), images)


@METHODS.register("mixup", reads={"method.mixup_alpha"})
class Mixup(SingleBranch):
    """Uniform sampler; the network sees lam * x + (1 - lam) * x[perm]."""

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepResult:
        x, y, generator = batch.x_c, batch.y_c, ctx.generator
        lam = mixup_lambda(self.cfg.method.mixup_alpha, generator)
        perm = _permutation(len(y), generator, y.device)
        z = model(mix(x, x[perm], lam))
        return _result(z, y, y[perm], lam, len(y))


@METHODS.register("manifold_mixup", reads={"method.mixup_alpha"})
class ManifoldMixup(Mixup):
    """Uniform sampler; the network mixes h_k with h_k[perm], k drawn per batch."""

    def check_model(self, model: nn.Module) -> None:
        """Only the plain ResNet-32 exposes the hidden states mixed (`hidden`, `forward_from`)."""
        if not isinstance(model, ResNet32):
            raise BBNError(
                f"method '{self.cfg.method.name}' mixes hidden states of the plain ResNet-32; "
                f"model.name='{self.cfg.model.name}' is not it (use model.name=resnet32)"
            )
        super().check_model(model)  # the cosine ResNet-32

    def step(self, model: ResNet32, batch: Batch, ctx: StepContext) -> StepResult:
        x, y, generator = batch.x_c, batch.y_c, ctx.generator
        lam = mixup_lambda(self.cfg.method.mixup_alpha, generator)
        k = mix_layer(generator)
        perm = _permutation(len(y), generator, y.device)
        h = model.hidden(x, k)
        z = model.forward_from(mix(h, h[perm], lam), k)
        return _result(z, y, y[perm], lam, len(y))


@METHODS.register("manifold_mixup_two", reads={"method.mixup_alpha"})
class ManifoldMixupTwoSamplers(ManifoldMixup):
    """Manifold Mixup with two samplers: h_k of a uniform batch (x_c, y_c) mixed with h_k of
    an equally sized reversed-sampler batch (x_r, y_r), element i with element i. Each batch
    goes through the first k stages on its own, as BBN's two branches do."""

    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(cfg, labels, num_classes)
        self.pairs = BBNPairSampler(self.uniform, reversed_sampler(labels, num_classes, cfg.train.epochs))

    def steps_per_epoch(self) -> int:
        return len(self.pairs)

    def plan(self, epoch: int, generator: torch.Generator) -> Plan:
        return self.pairs.plan(epoch, generator)

    def step(self, model: ResNet32, batch: Batch, ctx: StepContext) -> StepResult:
        x_c, y_c, x_r, y_r = batch  # uniform sampler, reversed sampler
        lam = mixup_lambda(self.cfg.method.mixup_alpha, ctx.generator)
        k = mix_layer(ctx.generator)
        z = model.forward_from(mix(model.hidden(x_c, k), model.hidden(x_r, k), lam), k)
        return _result(z, y_c, y_r, lam, len(y_c) + len(y_r))
