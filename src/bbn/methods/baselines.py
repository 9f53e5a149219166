"""The re-weighting and re-sampling baselines of the paper's comparison (SPEC §6).

Each is a `SingleBranch`: one network, one batch per step; what differs is the epoch's
sampler and the loss. The deferred ones (DRW, DRS) train as plain CE up to and including
`defer_epoch(cfg)` and re-balance from the next epoch on (epoch 161 of 200, the LDAM-DRW
code's `epoch // 160` on 0-based epochs). Beside the paper's: Balanced Softmax and the
logit-adjusted loss, which add the training class prior to the logits in the loss only.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bbn.config import Config
from bbn.errors import BBNError
from bbn.losses import (
    balanced_softmax_loss,
    class_balanced_focal_loss,
    effective_number_weights,
    focal_loss,
    inverse_frequency_weights,
    ldam_loss,
    ldam_margins,
    log_class_counts,
    log_class_prior,
    logit_adjusted_loss,
    weighted_cross_entropy,
)
from bbn.methods.base import METHODS
from bbn.methods.single import SingleBranch, defer_epoch
from bbn.models.resnet_cifar import NormedLinear
from bbn.samplers import REBALANCE_SAMPLERS


class ClassWeighted(SingleBranch):
    """A baseline whose loss weighs each sample by its true class; `class_weights(epoch)`
    says by how much (None = unweighted)."""

    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(cfg, labels, num_classes)
        self._copies: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def class_weights(self, epoch: int) -> torch.Tensor | None:
        """Per-class loss weights w_i at the 1-based `epoch` (None = plain CE)."""
        return None

    def _on(self, name: str, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """`t` on the device and dtype of `z`, copied there once (no host transfer per step)."""
        key = (name, z.device, z.dtype)
        if key not in self._copies:
            self._copies[key] = t.to(z)
        return self._copies[key]

    def _weights_like(self, z: torch.Tensor, epoch: int) -> torch.Tensor | None:
        w = self.class_weights(epoch)
        return None if w is None else self._on("w", w, z)

    def loss(self, z: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        return weighted_cross_entropy(z, y, self._weights_like(z, epoch))


@METHODS.register("rw")
class Reweighting(ClassWeighted):
    """RW: cross-entropy weighted by w_i proportional to 1 / N_i, uniform sampler."""

    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(cfg, labels, num_classes)
        self.weights = inverse_frequency_weights(self.class_counts)

    def class_weights(self, epoch: int) -> torch.Tensor | None:
        return self.weights


@METHODS.register("rs", reads={"method.sampler"})
class Resampling(SingleBranch):
    """RS: plain cross-entropy on re-sampled batches every epoch (method.sampler: class-
    balanced by default; sqrt, progressive, reversed or uniform)."""

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        REBALANCE_SAMPLERS.get(cfg.method.sampler)

    def sampler(self, epoch: int) -> str:
        return self.cfg.method.sampler


@METHODS.register("focal", reads={"method.focal_gamma"})
class Focal(SingleBranch):
    """Focal loss -(1 - p_t)^gamma log p_t, gamma = method.focal_gamma, uniform sampler."""

    def loss(self, z: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        return focal_loss(z, y, self.cfg.method.focal_gamma)


@METHODS.register("cb_focal", reads={"method.focal_gamma", "method.cb_beta"})
class ClassBalancedFocal(ClassWeighted):
    """CB-Focal: the focal term of each sample times the effective-number weight of its
    class (beta = method.cb_beta), uniform sampler."""

    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(cfg, labels, num_classes)
        self.weights = effective_number_weights(self.class_counts, cfg.method.cb_beta)

    def class_weights(self, epoch: int) -> torch.Tensor | None:
        return self.weights

    def loss(self, z: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        w = self._on("w", self.weights, z)
        return class_balanced_focal_loss(z, y, self.cfg.method.focal_gamma, w)


@METHODS.register("ce_drw", reads={"method.cb_beta", "method.defer_epoch"})
class DeferredReweighting(ClassWeighted):
    """CE-DRW: plain CE up to `defer_epoch`, then CE weighted by the effective-number
    weights (beta = method.cb_beta); uniform sampler throughout."""

    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(cfg, labels, num_classes)
        self.defer = defer_epoch(cfg)
        self.weights = effective_number_weights(self.class_counts, cfg.method.cb_beta)

    def class_weights(self, epoch: int) -> torch.Tensor | None:
        return None if epoch <= self.defer else self.weights


@METHODS.register("ce_drs", reads={"method.defer_epoch", "method.sampler"})
class DeferredResampling(SingleBranch):
    """CE-DRS: plain CE; the uniform sampler up to `defer_epoch`, method.sampler after
    (class-balanced by default)."""

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        REBALANCE_SAMPLERS.get(cfg.method.sampler)

    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(cfg, labels, num_classes)
        self.defer = defer_epoch(cfg)

    def sampler(self, epoch: int) -> str:
        return "uniform" if epoch <= self.defer else self.cfg.method.sampler


@METHODS.register("ldam_drw", reads={"method.cb_beta", "method.defer_epoch", "method.ldam_max_margin",
                                     "method.ldam_scale"})
class LDAMDRW(DeferredReweighting):
    """LDAM-DRW: the LDAM loss (margins m_i proportional to N_i^(-1/4), max
    method.ldam_max_margin; scale method.ldam_scale) on a cosine classifier, with DRW's
    class weights after `defer_epoch`."""

    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(cfg, labels, num_classes)
        self.margins = ldam_margins(self.class_counts, cfg.method.ldam_max_margin)

    def check_model(self, model: nn.Module) -> None:
        if not isinstance(getattr(model, "classifier", None), NormedLinear):
            raise BBNError(
                f"method 'ldam_drw' needs a cosine classifier, which only the CIFAR ResNet-32 has; "
                f"model.name='{self.cfg.model.name}' is not it (use model.name=resnet32_cosine)"
            )

    def loss(self, z: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        margins = self._on("m", self.margins, z)
        return ldam_loss(z, y, margins, self.cfg.method.ldam_scale, self._weights_like(z, epoch))


@METHODS.register("balanced_softmax")
class BalancedSoftmax(ClassWeighted):
    """Balanced Softmax (Ren et al., NeurIPS 2020): CE of z + log N_y, N the training class
    counts; uniform sampler, plain network. Inference is argmax z (the prior only trains)."""

    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(cfg, labels, num_classes)
        self.log_counts = log_class_counts(self.class_counts)

    def loss(self, z: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        return balanced_softmax_loss(z, y, self._on("log_n", self.log_counts, z))


@METHODS.register("logit_adjusted", reads={"method.la_tau"})
class LogitAdjusted(ClassWeighted):
    """Logit-adjusted loss (Menon et al., ICLR 2021): CE of z + tau * log pi_y, pi the
    training class prior, tau = method.la_tau; uniform sampler, plain network. Inference is
    argmax z (the adjustment only trains)."""

    def __init__(self, cfg: Config, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(cfg, labels, num_classes)
        self.log_prior = log_class_prior(self.class_counts)

    def loss(self, z: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        return logit_adjusted_loss(z, y, self._on("log_pi", self.log_prior, z), self.cfg.method.la_tau)
