"""Batched training augmentation on device (SPEC §4): random crop with zero padding,
horizontal flip, then normalisation.

Hand-written because torchvision's v2 transforms draw ONE random crop per call for a
batched tensor; the reference draws a crop and a flip per image, so we gather per-sample
windows with one advanced-indexing op on whatever device the uint8 batch is on.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop (same size, `padding` zero pixels each side) and optional
    horizontal flip of a uint8 (B, C, H, W) batch. Random draws come from the CPU
    `generator` so results do not depend on the device."""
    b, c, h, w = images.shape
    if b == 0 or (padding == 0 and not flip):
        return images
    dev = images.device
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    mirrored = torch.rand(b, generator=generator) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    rows = oy[:, None] + torch.arange(h)  # (B, H)
    cols = torch.arange(w).expand(b, w)
    cols = torch.where(mirrored[:, None], cols.flip(1), cols) + ox[:, None]  # (B, W)
    bi = torch.arange(b)[:, None, None, None]
    ci = torch.arange(c)[None, :, None, None]
    return padded[bi.to(dev), ci.to(dev), rows[:, None, :, None].to(dev), cols[:, None, None, :].to(dev)]


class Normalize:
    """uint8 -> float (x/255 - mean) / std per channel, on the batch's device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu") -> None:
        scale = torch.tensor(std, dtype=torch.float32) * 255.0
        self.scale = scale.view(1, -1, 1, 1).to(device)
        self.shift = (torch.tensor(mean, dtype=torch.float32) * 255.0).view(1, -1, 1, 1).to(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.shift) / self.scale
