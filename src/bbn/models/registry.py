"""The model registry: name -> constructor(num_classes, in_channels). The model files
register into it; bbn.models imports them all, so every name is known there."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from bbn.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def counterpart(name: str, bilateral: bool) -> str:
    """The model name of the same network with BBN's two branches (`bilateral`) or as one plain
    network: bbn_timm/resnet18 <-> timm/resnet18, bbn_resnet32 <-> resnet32 (resnet32_cosine ->
    resnet32 / bbn_resnet32); ResNet-32's names when the network has no such counterpart."""
    base = "resnet32" if name == "resnet32_cosine" else name.removeprefix("bbn_")
    want = f"bbn_{base}" if bilateral else base
    return want if want in MODELS else ("bbn_resnet32" if bilateral else "resnet32")
