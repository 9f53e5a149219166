"""Where a result comes from, for final.json and `bbn reproduce`: the git commit of the bbn
source (when it is a git checkout and git is installed; never an error) and the device."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch


def source_commit() -> str | None:
    """The commit of the git checkout bbn runs from, with `+dirty` when its files differ from
    it; None without git or outside a checkout (an installed package)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if head and dirty else (head or None)


def device_label(device: torch.device) -> str:
    """`cpu`, or the accelerator with its name (`cuda:0 (NVIDIA H200)`)."""
    if device.type == "cuda":
        try:
            return f"{device} ({torch.cuda.get_device_name(device)})"
        except (RuntimeError, AssertionError):
            return str(device)
    return str(device)
