"""The model registry: name -> constructor(num_classes, in_channels). The model files
register into it; bbn.models imports them all, so every name is known there."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from bbn.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
