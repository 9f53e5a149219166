"""Cumulative learning adaptors (SPEC §1-§2): alpha for the current epoch.

T is the 0-based epoch (epoch - 1). T_max is the number of epochs, except for 90 or
180 epochs, where the reference uses 100 * (epochs // 100 + 1), so alpha never reaches
0 on the 180-epoch iNaturalist schedule.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from bbn.methods.draws import beta_draw
from bbn.registry import Registry

# An adaptor maps (T, T_max, generator) -> alpha in [0, 1]; only "beta" uses the generator
# (the others accept None).
Adaptor = Callable[[int, float, torch.Generator | None], float]
ADAPTORS: Registry[Adaptor] = Registry("adaptor")


def t_max(epochs: int) -> int:
    """T_max for a schedule of `epochs` epochs (the reference's rule)."""
    return 100 * (epochs // 100 + 1) if epochs in (90, 180) else epochs


@ADAPTORS.register("parabolic_decay")
def parabolic_decay(T: int, T_max: float, generator: torch.Generator | None) -> float:
    """alpha = 1 - (T / T_max)^2: the paper's adaptor."""
    return 1.0 - (T / T_max) ** 2


@ADAPTORS.register("equal")
def equal(T: int, T_max: float, generator: torch.Generator | None) -> float:
    """alpha = 0.5 throughout."""
    return 0.5


@ADAPTORS.register("beta")
def beta(T: int, T_max: float, generator: torch.Generator | None) -> float:
    """alpha ~ Beta(0.2, 0.2), drawn afresh every step (seeded through `generator`)."""
    if generator is None:
        raise ValueError("the 'beta' adaptor draws alpha from the step's generator; pass one")
    return beta_draw(0.2, 0.2, generator)


@ADAPTORS.register("parabolic_increment")
def parabolic_increment(T: int, T_max: float, generator: torch.Generator | None) -> float:
    """alpha = (T / T_max)^2."""
    return (T / T_max) ** 2


@ADAPTORS.register("linear_decay")
def linear_decay(T: int, T_max: float, generator: torch.Generator | None) -> float:
    """alpha = 1 - T / T_max."""
    return 1.0 - T / T_max


@ADAPTORS.register("cosine_decay")
def cosine_decay(T: int, T_max: float, generator: torch.Generator | None) -> float:
    """alpha = cos(T / T_max * pi / 2)."""
    return math.cos(T / T_max * math.pi / 2)


@ADAPTORS.register("step")
def step(T: int, T_max: float, generator: torch.Generator | None) -> float:
    """alpha = 1 for the first 60 % of T_max, then 0 (epochs 1..120 of 200 in the reference)."""
    return 1.0 if T < 0.6 * T_max else 0.0


def cumulative_alpha(name: str, epoch: int, epochs: int, generator: torch.Generator | None,
                     T_max: float | None = None) -> float:
    """alpha of adaptor `name` at the 1-based `epoch` of an `epochs`-epoch schedule; `T_max`
    (method.t_max, which a budget sets: bbn.engine.budget) replaces the reference's rule."""
    return ADAPTORS.get(name)(epoch - 1, t_max(epochs) if T_max is None else T_max, generator)


def is_stochastic(name: str) -> bool:
    """Whether the adaptor draws a new alpha every step (only 'beta')."""
    return ADAPTORS.get(name) is beta
