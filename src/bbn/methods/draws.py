"""Random draws that must replay from the training generator."""

from __future__ import annotations

import numpy as np
import torch


def beta_draw(a: float, b: float, generator: torch.Generator) -> float:
    """One sample of Beta(a, b), reproducible from `generator` (torch's Beta takes no
    generator, so a seed drawn from it drives NumPy's sampler)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(a, b))
