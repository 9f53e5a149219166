"""Fast-path settings of the trainer: mixed precision, memory format and compilation.

Each is a config switch (`train.precision`, `train.channels_last`, `train.compile`) so the
fp32 reference path stays one override away and accuracy parity can be measured.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
import torch.nn as nn

from bbn.errors import BBNError

# The modules of the CIFAR ResNets that `compile_model` compiles in place (their names in
# the state dict do not change).
COMPILED_PARTS = ("layer1", "layer2", "layer3", "cb_block", "rb_block")


def bf16_fast(device: torch.device) -> bool:
    """Whether bf16 matrix maths runs natively on `device` (CUDA with bf16, or a CPU with
    AVX512-BF16 / AMX); elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision` (None = plain fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if bf16_fast(device) else None
    raise BBNError(f"train.precision '{precision}' is not one of fp32, bf16, auto")


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """Autocast to `dtype` on `device`, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def compile_model(model: nn.Module) -> None:
    """Compile the residual stages and branch blocks in place (conv + BN + ReLU fusion).
    The model keeps its class, methods and state-dict names; only the parts' forward
    passes are compiled."""
    backbone = getattr(model, "backbone", None)
    parts = [getattr(backbone, name) for name in COMPILED_PARTS if hasattr(backbone, name)]
    if not parts:
        raise BBNError("train.compile=true supports the CIFAR ResNets; set train.compile=false")
    for part in parts:
        part.compile()
