"""Post-hoc adjustment at evaluation (`bbn eval --adjust KIND:tau=T|sweep`): the one place
the formulas live. The network is run once; every adjustment and every tau of a sweep is
applied to the stored logits / features of that one pass.

Kinds (a registry of name -> rule):
* `logit` — logit adjustment by the training class prior (Menon et al., ICLR 2021, the
  post-hoc form): z_y - tau * log pi_y, pi_y = N_y / sum_j N_j of the training set.
* `tau_norm` — classifier weight normalisation (Kang et al., ICLR 2020): each class row
  w_i -> w_i / ||w_i||_2^tau (`tau_normalized_weights`, also the `tau_norm` rule of
  `bbn study retrain`), the bias kept, so tau = 0 gives the unadjusted logits. BBN's classifier is one linear layer over
  cat(f_c, f_r): each branch's half of a row is normalised on its own, w_i = [W_c[i]; W_r[i]]
  -> [W_c[i] / ||W_c[i]||^tau; W_r[i] / ||W_r[i]||^tau], so the combined logits (alpha = 0.5)
  are W~_c f_c + W~_r f_r + b and a branch alone (`--branch cb|rb`) W~_c f_c + b or
  W~_r f_r + b. The halves act on different features and their norms differ (Figure 5,
  bbn.tools.analysis), so one norm over the whole row would let one branch rescale the other.

`tau=sweep` tries every tau of the kind's fixed grid (`SWEEP_TAUS`) and keeps the best by
top-1 on the split `select_tau` is given: the run's validation split when it has one, else
the test set, and the result says which (`selection: val|test`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from bbn.engine.metrics import classification_metrics, summary_lines
from bbn.errors import BBNError, quote
from bbn.losses import log_class_prior
from bbn.models import BilateralModel
from bbn.registry import Registry

SWEEP = "sweep"
# The fixed sweep grids: logit adjustment 0, 0.1, ..., 2 (tau = 1 is the prior's own
# strength, Menon et al.); tau-normalisation 0, 0.1, ..., 1 (the Decoupling range).
LOGIT_TAUS = tuple(round(0.1 * i, 1) for i in range(21))
TAU_NORM_TAUS = tuple(round(0.1 * i, 1) for i in range(11))
SWEEP_TAUS: dict[str, tuple[float, ...]] = {"logit": LOGIT_TAUS, "tau_norm": TAU_NORM_TAUS}
EXAMPLE = "logit:tau=1.0, tau_norm:tau=0.5 or logit:tau=sweep"


@dataclass(frozen=True)
class Outputs:
    """One split's single inference pass: logits (N x C), labels and, when a `tau_norm`
    adjustment needs them, the features the linear classifier acts on (for BBN's combined
    classifier cat(f_c, f_r))."""

    logits: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor | None = None


@dataclass(frozen=True)
class LinearHead:
    """A linear classifier as column blocks of its weight, one per feature part (plain:
    (W,); BBN: (W_c, W_r), or one branch's block alone), and its bias."""

    blocks: tuple[torch.Tensor, ...]
    bias: torch.Tensor | None

    def logits(self, features: torch.Tensor, tau: float) -> torch.Tensor:
        """Logits of the tau-normalised classifier: each block's rows normalised on their own."""
        W = torch.cat([tau_normalized_weights(w.float(), tau) for w in self.blocks], dim=1)  # noqa: N806
        z = features.float() @ W.t()
        return z if self.bias is None else z + self.bias.float()


@dataclass(frozen=True)
class Basis:
    """What the adjustments read besides the logits: the training class counts (the prior)
    and the linear head (None when no `tau_norm` is asked for)."""

    class_counts: Sequence[int]
    head: LinearHead | None = None


@dataclass(frozen=True)
class AdjustSpec:
    """One `--adjust` value: its kind and tau (None: sweep the kind's grid)."""

    kind: str
    tau: float | None

    @property
    def key(self) -> str:
        """The eval.json key: `kind:tau=T` (T as a float, e.g. 1.0) or `kind:tau=sweep`."""
        return f"{self.kind}:tau={SWEEP if self.tau is None else repr(float(self.tau))}"


def tau_normalized_weights(W: torch.Tensor, tau: float) -> torch.Tensor:  # noqa: N803 - paper name
    """tau-normalisation: w_i / ||w_i||_2^tau for every class row i (Decoupling)."""
    return W / W.norm(dim=1, keepdim=True).pow(tau)


def logit_adjusted(logits: torch.Tensor, class_counts: Sequence[int], tau: float) -> torch.Tensor:
    """z - tau * log pi with pi the training class prior N_i / sum_j N_j (Menon et al.)."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if bool((counts <= 0).any()):
        empty = int(torch.nonzero(counts <= 0)[0, 0])
        raise BBNError(f"class {empty} has no training images, so its prior is 0 and logit adjustment "
                       "is undefined; use --adjust tau_norm")
    return logits.float() - tau * log_class_prior(counts).to(logits.device)


# An adjustment maps (one split's outputs, basis, tau) -> adjusted logits.
Adjustment = Callable[[Outputs, Basis, float], torch.Tensor]
ADJUSTMENTS: Registry[Adjustment] = Registry("--adjust kind")


@ADJUSTMENTS.register("logit")
def _logit(out: Outputs, basis: Basis, tau: float) -> torch.Tensor:
    return logit_adjusted(out.logits, basis.class_counts, tau)


@ADJUSTMENTS.register("tau_norm")
def _tau_norm(out: Outputs, basis: Basis, tau: float) -> torch.Tensor:
    if basis.head is None or out.features is None:
        raise ValueError("tau_norm needs the linear head and the features (infer with features)")
    return basis.head.logits(out.features, tau)


def parse_adjust(text: str) -> AdjustSpec:
    """`KIND:tau=T` (T a number >= 0) or `KIND:tau=sweep` -> AdjustSpec; anything else a
    BBNError naming the fix."""
    kind, sep, params = text.partition(":")
    ADJUSTMENTS.get(kind.strip())  # unknown kind: the registry names the closest
    kind, given = kind.strip(), quote(text, 60)
    if not sep or not params.strip():
        raise BBNError(f"--adjust '{given}' gives no tau; write {kind}:tau=T with T a number >= 0, "
                       f"or {kind}:tau=sweep")
    tau_text: str | None = None
    for item in params.split(","):
        name, eq, value = item.partition("=")
        name = name.strip()
        if name != "tau" or not eq:
            raise BBNError(f"unknown parameter '{quote(item.strip(), 40)}' in --adjust '{given}'; the only parameter is "
                           f"tau, e.g. {kind}:tau=1.0")
        if tau_text is not None:
            raise BBNError(f"--adjust '{given}' gives tau twice; give it once, e.g. {kind}:tau=1.0")
        tau_text = value.strip()
    assert tau_text is not None
    if tau_text == SWEEP:
        return AdjustSpec(kind, None)
    try:
        tau = float(tau_text)
    except ValueError:
        tau = math.nan
    if not math.isfinite(tau) or tau < 0:
        raise BBNError(f"tau '{quote(tau_text, 40)}' in --adjust '{given}' is not a number >= 0; give e.g. {kind}:tau=1.0 "
                       f"or {kind}:tau=sweep")
    return AdjustSpec(kind, tau)


def parse_adjustments(texts: Sequence[str] | None) -> list[AdjustSpec]:
    """Every `--adjust` value parsed (in order, a repeated one kept once)."""
    specs: dict[str, AdjustSpec] = {}
    for text in texts or ():
        spec = parse_adjust(text)
        specs.setdefault(spec.key, spec)
    return list(specs.values())


def needs_features(specs: Sequence[AdjustSpec]) -> bool:
    """Whether an adjustment acts on the features (tau_norm), not only the logits."""
    return any(spec.kind == "tau_norm" for spec in specs)


def linear_head(model: nn.Module, branch: str = "all", model_name: str = "this model") -> LinearHead:
    """The head tau_norm rescales: BBN's (W_c, W_r) and shared bias (one block for a branch
    alone), or a plain model's nn.Linear `classifier`; a BBNError for any other classifier
    (the cosine classifier's rows are unit-norm already)."""
    if isinstance(model, BilateralModel):
        if branch == "all":
            return LinearHead((model.W_c.detach(), model.W_r.detach()), model.classifier.bias.detach())
        w, b = model.branch_classifier(branch)
        return LinearHead((w.detach(),), b.detach())
    layer = getattr(model, "classifier", None)
    if not isinstance(layer, nn.Linear) or not callable(getattr(model, "features", None)):
        found = type(layer).__name__ if layer is not None else "no classifier"
        raise BBNError(f"--adjust tau_norm needs a linear classifier, but {model_name} has {found}; "
                       "use --adjust logit:tau=T (or tau=sweep) instead")
    return LinearHead((layer.weight.detach(),), None if layer.bias is None else layer.bias.detach())


def adjusted_logits(spec_kind: str, out: Outputs, basis: Basis, tau: float) -> torch.Tensor:
    """The logits of `out` under adjustment `spec_kind` with this tau."""
    return ADJUSTMENTS.get(spec_kind)(out, basis, tau)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(dim=1) == labels.to(logits.device)).double().mean() * 100.0)


def select_tau(kind: str, split: Outputs, basis: Basis,
               taus: Sequence[float] | None = None) -> tuple[float, list[dict[str, float]]]:
    """The tau of `taus` (default: the kind's SWEEP_TAUS grid) with the best top-1 on `split`,
    the first of equal maxima, and every tau's top-1 there. Pass the validation split when
    the run has one; the caller labels the result with the split it passed."""
    grid = SWEEP_TAUS[kind] if taus is None else tuple(taus)
    rows = [{"tau": tau, "top1": top1(adjusted_logits(kind, split, basis, tau), split.labels)} for tau in grid]
    best = max(rows, key=lambda row: row["top1"])  # max keeps the first of equal maxima
    return best["tau"], rows


def adjusted_results(specs: Sequence[AdjustSpec], test: Outputs, basis: Basis,
                     val: Outputs | None = None) -> dict[str, dict[str, Any]]:
    """{spec key: the full `classification_metrics` of the adjusted test logits, with `tau`;
    a sweep also has `selection` ('val' when `val` is given, else 'test') and `sweep` (every
    tau's top-1 on that split)}."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        extra: dict[str, Any] = {}
        tau = spec.tau
        if tau is None:
            tau, rows = select_tau(spec.kind, test if val is None else val, basis)
            extra = {"selection": "test" if val is None else "val", "sweep": rows}
        logits = adjusted_logits(spec.kind, test, basis, tau)
        out[spec.key] = {**classification_metrics(logits, test.labels, list(basis.class_counts)), "tau": tau, **extra}
    return out


def format_adjusted(adjusted: dict[str, dict[str, Any]], base_top1: float) -> list[str]:
    """The printed lines of each adjustment: a title (a sweep's chosen tau and its selection
    split), then the usual summary lines, indented."""
    lines = []
    for key, result in adjusted.items():
        change = f"{result['top1'] - base_top1:+.2f} points top-1"
        if "selection" in result:
            split = "validation split" if result["selection"] == "val" else "test set (optimistic)"
            title = (f"adjusted {key}: tau {result['tau']:g} chosen by top-1 on the {split}, "
                     f"selection: {result['selection']} ({change})")
        else:
            title = f"adjusted {key} ({change})"
        lines += [title, *("  " + line for line in summary_lines(result))]
    return lines

