"""Where a result comes from, for final.json, `bbn reproduce` and the benchmarks: the git
commit of the bbn source (when it is a git checkout and git is installed; never an error),
the device, and the host features a speed depends on."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

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


# CPU features that decide the speed of training: AVX2 (fp32 only), AVX512, native bf16
# (AVX512-BF16, AMX).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def host_report() -> dict[str, Any]:
    """What a speed figure depends on: the CPU model and cores, its speed flags present,
    oneDNN's version and CPU capability in this torch build, whether oneDNN runs bf16
    natively, torch's threads and version, the GPU if any, and the 1-minute load average."""
    cpu, flags = platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == platform.machine():
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # not Linux: the model and flags are not read
        pass
    build = torch.__config__.show()
    onednn = re.search(r"(?:oneDNN|MKL-DNN) v([\w.]+)", build)
    capability = re.search(r"CPU capability usage: (\w+)", build)
    report: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "flags": [f for f in SPEED_FLAGS if f in flags],
        "onednn": onednn.group(1) if onednn else None, "cpu_capability": capability.group(1) if capability else None,
        "bf16_native": bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,  # others' work on a shared host
    }
    return report


def host_line(report: dict[str, Any] | None = None) -> str:
    """`host_report()` in one line, for benchmark tables and logs."""
    r = report or host_report()
    flags = ", ".join(r["flags"]) or "none of " + "/".join(SPEED_FLAGS)
    text = (f"{r['cpu']}, {r['cores']} cores ({flags}; native bf16: {'yes' if r['bf16_native'] else 'no'}); "
            f"torch {r['torch']}, oneDNN {r['onednn']} ({r['cpu_capability']}), {r['threads']} threads")
    text += f"; GPU {r['gpu']}" if r["gpu"] else ""
    return text + (f"; load average {r['load']:.1f}" if r.get("load") is not None else "")
