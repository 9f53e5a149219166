"""The schedule a run trains with: a budget that keeps the recipe's shape (`train.budget`)
and the recipe guard on the learning rate (`train.lr_scale`).

A config is the recipe (config.yaml keeps it as asked, with `train.budget`);
`effective_config` maps it, once, when a run is built, to the config the run trains with.
Every epoch count of the schedule is scaled by the same budget b:

* epochs E -> E' = max(1, round(b * E));
* warm-up W -> round(b * W) (a warm-up under 2 epochs has no effect: epoch e uses the
  warm-up factor only while e < W);
* each LR milestone m (the LR drops from epoch m on, after m - 1 epochs) scales by the epochs
  done before the drop: m -> round(b * (m - 1)) + 1 (120 and 160 of 200 at b = 0.1: 13
  and 17 of 20, so 60 % of the run is at the base LR, as in the recipe), each on its own,
  then kept within 2..E' (a milestone of the recipe's run stays in the budget run, and
  none lands on epoch 1, which would lower the whole run's LR: a budget run starts at the
  recipe's LR and, from E' = 2 on, ends at its final LR). Milestones that land on the same
  epoch all apply there (gamma once per milestone, as torch's MultiStepLR). A recipe
  milestone at epoch 1 stays at 1; one after the recipe's last epoch stays after E';
  with E' = 1 no milestone fires;
* the DRW/DRS switch d (method.defer_epoch, or 80 % of E: bbn.methods.single.defer_epoch)
  -> round(b * d) kept within 1..E'-1, so both phases stay (a run of 1 epoch is refused);
* cumulative learning's T_max: the recipe's (method.t_max, or the reference's rule from
  E, bbn.methods.cumulative.t_max: 100 / 200 for 90 / 180 epochs) times E' / E, unrounded,
  so alpha = f(T / T_max) follows the recipe's curve over the fraction of training
  (180 epochs at b = 0.1: E' = 18, T_max = 200 * 18 / 180 = 20).

round is half up (round(0.5) = 1). At b = 1 the schedule is the recipe's, unchanged. The
effective config has budget 1 and lr_scale none (it is its own recipe, so mapping it again
changes nothing); it is derived, not input, so repeated milestones are allowed in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bbn.config import Config
from bbn.errors import BBNError
from bbn.methods import METHODS
from bbn.methods.cumulative import t_max
from bbn.methods.single import defer_epoch


def scaled(epochs: int | float, budget: float) -> int:
    """round(budget * epochs), half up."""
    return math.floor(budget * epochs + 0.5)


def scaled_milestone(m: int, budget: float, epochs: int, budget_epochs: int) -> int:
    """Milestone `m` of an `epochs`-epoch recipe in its `budget_epochs`-epoch run (see above)."""
    at = scaled(m - 1, budget) + 1
    if m <= epochs:
        at = min(at, budget_epochs)
    return max(min(m, 2), at)


@dataclass(frozen=True)
class Schedule:
    """The epoch counts of a schedule; `defer_epoch` / `t_max` are None for the methods that
    have no deferred phase / no cumulative learning."""

    epochs: int
    warmup_epochs: int
    milestones: tuple[int, ...]
    defer_epoch: int | None
    t_max: float | None


def _reads(cfg: Config, key: str) -> bool:
    return key in METHODS.reads(cfg.method.name)


def recipe_schedule(cfg: Config) -> Schedule:
    """The schedule of the recipe (budget aside)."""
    t = cfg.train
    return Schedule(
        epochs=t.epochs, warmup_epochs=t.warmup_epochs, milestones=tuple(t.milestones),
        defer_epoch=defer_epoch(cfg) if _reads(cfg, "method.defer_epoch") else None,
        t_max=(cfg.method.t_max or float(t_max(t.epochs))) if _reads(cfg, "method.t_max") else None,
    )


def effective_schedule(cfg: Config) -> Schedule:
    """The recipe's schedule scaled by `train.budget` (the rules of this module's docstring)."""
    recipe, b = recipe_schedule(cfg), cfg.train.budget
    if b == 1.0:
        return recipe
    epochs = max(1, scaled(recipe.epochs, b))
    defer = None
    if recipe.defer_epoch is not None:
        if epochs < 2:
            raise BBNError(f"train.budget={b} leaves {epochs} epoch of train.epochs={recipe.epochs}, too short for "
                           f"both phases of method '{cfg.method.name}'; give a budget of at least {1.5 / recipe.epochs:.3g}")
        defer = min(max(1, scaled(recipe.defer_epoch, b)), epochs - 1)
    return Schedule(
        epochs=epochs, warmup_epochs=scaled(recipe.warmup_epochs, b),
        milestones=tuple(scaled_milestone(m, b, recipe.epochs, epochs) for m in recipe.milestones),
        defer_epoch=defer,
        t_max=None if recipe.t_max is None else recipe.t_max * epochs / recipe.epochs,
    )


def recipe_batch_size(cfg: Config) -> int:
    """The global batch the recipe's learning rate was set for."""
    return cfg.train.recipe_batch_size or cfg.train.batch_size


def effective_lr(cfg: Config) -> float:
    """train.lr, times batch_size / recipe_batch_size under lr_scale=linear (Goyal et al.)."""
    if cfg.train.lr_scale == "linear":
        return cfg.train.lr * cfg.train.batch_size / recipe_batch_size(cfg)
    return cfg.train.lr


def effective_config(cfg: Config) -> Config:
    """The config the run trains with: the budget's schedule and the scaled lr applied."""
    s = effective_schedule(cfg)
    train = cfg.train.model_copy(update={
        "epochs": s.epochs, "warmup_epochs": s.warmup_epochs, "milestones": list(s.milestones),
        "lr": effective_lr(cfg), "budget": 1.0, "lr_scale": "none"})
    method = cfg.method
    if cfg.train.budget != 1.0:
        method = method.model_copy(update={
            **({"defer_epoch": s.defer_epoch} if s.defer_epoch is not None else {}),
            **({"t_max": s.t_max} if s.t_max is not None else {})})
    return cfg.model_copy(deep=True).model_copy(update={"train": train, "method": method})


def budget_line(cfg: Config) -> str | None:
    """What the budget makes of the recipe, in one line (None at budget 1)."""
    if cfg.train.budget == 1.0:
        return None
    r, s = recipe_schedule(cfg), effective_schedule(cfg)
    parts = [f"{s.epochs} of {r.epochs} epochs", f"warm-up {s.warmup_epochs} (of {r.warmup_epochs})",
             f"LR milestones {list(s.milestones)} (of {list(r.milestones)})"]
    if s.defer_epoch is not None:
        parts.append(f"deferred phase after epoch {s.defer_epoch} (of {r.defer_epoch})")
    if s.t_max is not None:
        parts.append(f"alpha's T_max {s.t_max:g} (of {r.t_max:g})")
    return f"train.budget={cfg.train.budget:g} scales the recipe's schedule: {', '.join(parts)}"


def batch_line(cfg: Config) -> str | None:
    """The recipe guard: one line when the global batch is not the recipe's (None when it is)."""
    batch, recipe = cfg.train.batch_size, recipe_batch_size(cfg)
    if batch == recipe:
        return None
    head = (f"global batch {batch} differs from the recipe's {recipe} (train.recipe_batch_size; the batch is "
            "global, split across torchrun processes)")
    if cfg.train.lr_scale == "linear":
        return f"{head}: train.lr_scale=linear scales lr {cfg.train.lr:g} by {batch}/{recipe} to {effective_lr(cfg):g}"
    return (f"{head}: lr stays {cfg.train.lr:g} (train.lr_scale=none); train.lr_scale=linear would use "
            f"{cfg.train.lr * batch / recipe:g}")


def schedule_comment(cfg: Config) -> str:
    """config.yaml's closing comment: what the run trains with, when that is not the recipe."""
    lines = [line for line in (budget_line(cfg), batch_line(cfg)) if line]
    if not lines:
        return ""
    s, lr = effective_schedule(cfg), effective_lr(cfg)
    effective = (f"epochs {s.epochs}, warmup_epochs {s.warmup_epochs}, milestones {list(s.milestones)}, lr {lr:g}"
                 + (f", defer_epoch {s.defer_epoch}" if s.defer_epoch is not None else "")
                 + (f", t_max {s.t_max:g}" if s.t_max is not None else ""))
    return "".join(f"# {line}\n" for line in [*lines, f"effective schedule (derived from the keys above): {effective}"])
