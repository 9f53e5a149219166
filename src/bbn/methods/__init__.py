"""Training rules: a registry of name -> Method class. The trainer asks a method for a loss."""

from bbn.methods.base import METHODS, Batch, Method, StepContext, StepResult
from bbn.methods import bbn as _bbn  # noqa: F401  (registers "bbn")
from bbn.methods import single as _single  # noqa: F401  (registers "ce")
from bbn.methods import baselines as _baselines  # noqa: F401  (rw, rs, focal, cb_focal, ce_drw, ce_drs, ldam_drw)
from bbn.methods import mixup as _mixup  # noqa: F401  (registers "mixup", "manifold_mixup", "manifold_mixup_two")

__all__ = ["METHODS", "Batch", "Method", "StepContext", "StepResult"]
