"""Device names: which ones bbn runs on, and whether this machine has the one asked for,
checked before anything is written (train.device, and eval's and predict's --device)."""

from __future__ import annotations

import re

from bbn.errors import BBNError, quote

DEVICES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def check_device_name(name: str) -> str:
    """`name` when it names a device bbn runs on (whether this machine has it aside)."""
    if not _DEVICE.fullmatch(name):
        raise BBNError(f"device '{quote(name)}' is not one bbn runs on; use {DEVICES}")
    return name


def available_devices() -> list[str]:
    """The devices this machine has: cpu, then cuda and cuda:N, then mps."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_device(name: str) -> str:
    """The device `name` stands for on this machine ('auto': CUDA when present, else CPU), or
    a one-line BBNError naming what the machine has: for train.device and --device alike."""
    import torch

    check_device_name(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    available = available_devices()
    if name not in available:
        raise BBNError(f"device '{name}' is not available on this machine (available: {', '.join(available)}); "
                       "use one of those (train.device=NAME, or --device NAME for eval and predict)")
    return name


def resolve_device(name: str) -> "torch.device":
    """'auto' -> CUDA when present, else CPU; a device this machine lacks is a BBNError."""
    import torch

    return torch.device(check_device(name))
