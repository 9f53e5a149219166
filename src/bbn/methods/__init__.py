"""Training rules: a registry of name -> Method class. The trainer asks a method for a loss."""

from bbn.methods.base import METHODS, Method, StepResult
from bbn.methods import bbn as _bbn  # noqa: F401  (registers "bbn")
from bbn.methods import single as _single  # noqa: F401  (registers "ce")

__all__ = ["METHODS", "Method", "StepResult"]
