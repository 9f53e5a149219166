"""Stage 2: a classifier learned on frozen features (SPEC §7, Figure 1 and feature quality).

Rules (a registry of name -> rule):
* `ce`  — a new linear layer, uniform sampling, cross-entropy;
* `rw`  — the same, cross-entropy weighted by the inverse class frequency (RW);
* `rs`  — the same, class-balanced sampling (RS); this is cRT of the Decoupling paper
  (Kang et al., ICLR 2020), also registered as `crt`;
* `tau_norm` — no training: the run's own weights rescaled to w_i / ||w_i||^tau
  (bbn.tools.adjust.tau_normalized_weights), bias dropped, for each tau of a list;
* `lws` — learnable weight scaling: the run's classifier frozen, one scale f_i per class
  learned with class-balanced sampling, logits f_i * (w_i . x) + b_i.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from bbn.config import Config
from bbn.samplers import REBALANCE_SAMPLERS, UniformSampler, drawn_batches
from bbn.errors import BBNError
from bbn.losses import inverse_frequency_weights
from bbn.engine.metrics import classification_metrics
from bbn.engine.optim import set_lr
from bbn.registry import Registry
from bbn.tools.adjust import TAU_NORM_TAUS, tau_normalized_weights
from bbn.tools.study.features import FrozenFeatures

STAGE2_EPOCHS = 10  # Decoupling's cRT schedule
STAGE2_MOMENTUM = 0.9
DEFAULT_TAUS = TAU_NORM_TAUS  # 0, 0.1, ..., 1
TAU_NOTE = "tau chosen on the test set: an optimistic number"


@dataclass(frozen=True)
class Stage2:
    """Stage-2 settings: SGD (momentum 0.9) with cosine decay to 0 over `epochs`."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    momentum: float = STAGE2_MOMENTUM
    taus: tuple[float, ...] = DEFAULT_TAUS

    @classmethod
    def from_config(cls, cfg: Config, epochs: int = STAGE2_EPOCHS,
                    taus: tuple[float, ...] = DEFAULT_TAUS) -> "Stage2":
        """Batch size, base LR, weight decay and seed of the run's own config."""
        if epochs < 1:
            raise BBNError(f"classifier epochs must be >= 1, got {epochs}")
        if not taus or any(not math.isfinite(t) or t < 0 for t in taus):
            raise BBNError(f"taus must be a non-empty list of numbers >= 0, got {list(taus)}")
        return cls(epochs=epochs, batch_size=cfg.train.batch_size, lr=cfg.train.lr,
                   weight_decay=cfg.train.weight_decay, seed=cfg.seed, taus=tuple(taus))


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """lr_t = base_lr * (1 + cos(pi * t / T)) / 2 for step t of T: from base_lr down to 0."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * step / total_steps))


def stage2_batches(labels: torch.Tensor, num_classes: int, sampler: str, batch_size: int, epoch: int,
                   epochs: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Stage-2 epoch `epoch` (1-based, of `epochs`) as index batches: 'uniform' (each feature
    once, shuffled) or a re-balancing sampler ('balanced'), as many batches as the uniform
    epoch has."""
    uniform = UniformSampler(len(labels), batch_size, drop_last=False)
    if sampler == "uniform":
        return uniform.epoch(generator)
    rebalance = REBALANCE_SAMPLERS.get(sampler)(labels, num_classes, epochs)
    return iter(drawn_batches(rebalance, len(uniform), batch_size, epoch, generator))


def new_linear(feature_dim: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """A fresh linear classifier: Kaiming-normal weights (as the models' init), zero bias,
    drawn from `generator` so stage 2 is reproducible."""
    layer = nn.Linear(feature_dim, num_classes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(num_classes, feature_dim, generator=generator) * math.sqrt(2.0 / feature_dim))
        layer.bias.zero_()
    return layer


class LWSHead(nn.Module):
    """Learnable weight scaling: frozen (W, b), logits f_i * (w_i . x) + b_i with one
    learnable scale f_i per class (the weights' magnitudes, not the bias, are rescaled)."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor) -> None:  # noqa: N803 - paper name
        super().__init__()
        self.register_buffer("W", W.detach().clone())
        self.register_buffer("b", b.detach().clone())
        self.scales = nn.Parameter(torch.ones(W.shape[0], device=W.device, dtype=W.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scales * (x @ self.W.t()) + self.b


def train_head(head: nn.Module, feats: FrozenFeatures, sampler: str,
               class_weights: torch.Tensor | None, s: Stage2, generator: torch.Generator) -> float:
    """Fit `head` on the frozen training features; returns the last epoch's mean loss."""
    device = feats.train_x.device
    head.to(device).train()
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    weight = None if class_weights is None else class_weights.to(device)
    labels = feats.train_y.cpu()
    steps = len(UniformSampler(len(labels), s.batch_size, drop_last=False))
    total, t, loss_sum = s.epochs * steps, 0, torch.zeros((), device=device)
    for epoch in range(1, s.epochs + 1):
        loss_sum = torch.zeros((), device=device)
        for idx in stage2_batches(labels, feats.num_classes, sampler, s.batch_size, epoch, s.epochs, generator):
            set_lr(optimizer, cosine_lr(s.lr, t, total))
            idx = idx.to(device)
            loss = F.cross_entropy(head(feats.train_x[idx]), feats.train_y[idx], weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            t += 1
    head.eval()
    return float(loss_sum) / steps


@torch.no_grad()
def head_metrics(head: Callable[[torch.Tensor], torch.Tensor], feats: FrozenFeatures) -> dict[str, Any]:
    """Test metrics (top-1, top-5, many / medium / few) of `head` on the frozen test features."""
    return classification_metrics(head(feats.test_x), feats.test_y, feats.class_counts)


def own_metrics(feats: FrozenFeatures) -> dict[str, Any]:
    """Test metrics of the run's own classifier, logits W x + b, on the frozen features."""
    return head_metrics(lambda x: x @ feats.W.t() + feats.b, feats)


# A rule maps (features, settings, generator) -> {"metrics": ..., rule-specific extras}.
ClassifierRule = Callable[[FrozenFeatures, Stage2, torch.Generator], dict[str, Any]]
CLASSIFIER_RULES: Registry[ClassifierRule] = Registry("classifier rule")


def _new_classifier(sampler: str, reweight: bool) -> ClassifierRule:
    def rule(feats: FrozenFeatures, s: Stage2, generator: torch.Generator) -> dict[str, Any]:
        head = new_linear(feats.feature_dim, feats.num_classes, generator)
        weights = inverse_frequency_weights(feats.class_counts) if reweight else None
        loss = train_head(head, feats, sampler, weights, s, generator)
        return {"metrics": head_metrics(head, feats), "train_loss": loss}

    return rule


CLASSIFIER_RULES.register("ce")(_new_classifier("uniform", reweight=False))
CLASSIFIER_RULES.register("rw")(_new_classifier("uniform", reweight=True))
CLASSIFIER_RULES.register("rs")(_new_classifier("balanced", reweight=False))
CLASSIFIER_RULES.register("crt")(CLASSIFIER_RULES.get("rs"))


@CLASSIFIER_RULES.register("tau_norm")
def tau_norm(feats: FrozenFeatures, s: Stage2, generator: torch.Generator) -> dict[str, Any]:
    """Every tau of `s.taus`; the metrics are those of the best tau (chosen on the test set)."""
    results = []
    for tau in s.taus:
        W_tau = tau_normalized_weights(feats.W, tau)  # noqa: N806 - paper name
        results.append((tau, head_metrics(lambda x: x @ W_tau.t(), feats)))
    best_tau, best = max(results, key=lambda r: r[1]["top1"])  # the first of equal maxima
    per_tau = [{"tau": tau, **{k: m[k] for k in ("top1", "many", "medium", "few")}} for tau, m in results]
    return {"metrics": best, "best_tau": best_tau, "taus": per_tau, "note": TAU_NOTE}


@CLASSIFIER_RULES.register("lws")
def lws(feats: FrozenFeatures, s: Stage2, generator: torch.Generator) -> dict[str, Any]:
    head = LWSHead(feats.W, feats.b)
    loss = train_head(head, feats, "balanced", None, s, generator)
    return {"metrics": head_metrics(head, feats), "train_loss": loss,
            "scales": head.scales.detach().cpu().tolist()}


def retrain_classifier(feats: FrozenFeatures, rule: str, s: Stage2) -> dict[str, Any]:
    """Apply classifier rule `rule` to the frozen features, seeded from `s.seed`; the result
    holds the test metrics, the run's own classifier's top-1 and the settings."""
    fn = CLASSIFIER_RULES.get(rule)
    start = time.perf_counter()
    out = fn(feats, s, torch.Generator().manual_seed(s.seed))
    metrics = out.pop("metrics")
    own = own_metrics(feats)
    settings: dict[str, Any] = asdict(s)
    if fn is tau_norm:  # no training: only the taus matter
        settings = {"taus": list(s.taus)}
    else:
        settings.pop("taus")
    return {"rule": rule, **metrics, **out, "own_top1": own["top1"], "settings": settings,
            "stage2_s": time.perf_counter() - start}
