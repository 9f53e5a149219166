"""Fast-path settings of the trainer: mixed precision, memory format and compilation.

Each is a config switch (`train.precision`, `train.channels_last`, `train.compile`) so the
fp32 reference path stays one override away and accuracy parity can be measured.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
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


PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved `train.precision`: `name` (fp32, bf16 or fp16) and `why` it was chosen."""

    name: str
    why: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: plain fp32)."""
        return AUTOCAST_DTYPES[self.name]

    @property
    def scaled(self) -> bool:
        """Whether the loss needs a gradient scaler (fp16: small gradients underflow)."""
        return self.name == "fp16"

    def line(self) -> str:
        return f"precision {self.name} ({self.why})"


FP32 = Precision("fp32", "set by train.precision")


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """`train.precision` on `device`. auto: bf16 autocast where the device runs bf16 natively
    (CUDA with bf16; a CPU whose oneDNN reports bf16, i.e. AVX512-BF16 or AMX), fp16 with a
    gradient scaler on CUDA without bf16, fp32 elsewhere. fp16 needs CUDA."""
    if requested == "auto":
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                return Precision("bf16", "auto: this CUDA device runs bf16 natively")
            return Precision("fp16", "auto: this CUDA device has no bf16; fp16 with a gradient scaler")
        if bf16_fast(device):
            return Precision("bf16", "auto: this CPU runs bf16 natively (AVX512-BF16 or AMX)")
        return Precision("fp32", f"auto: this {device.type.upper()} has no native bf16 (it would be emulated, "
                                 "slower than fp32)")
    if requested not in PRECISIONS:
        raise BBNError(f"train.precision '{requested}' is not one of {', '.join(PRECISIONS)}, auto")
    check_runs(requested, device, "train.precision")
    why = "set by train.precision"
    if requested == "bf16" and not bf16_fast(device):
        why += f"; this {device.type.upper()} emulates bf16, slower than fp32"
    return Precision(requested, why)


def check_runs(name: str, device: torch.device, what: str, fix: str = "use another train.precision") -> None:
    """A one-line error when `device` cannot compute in precision `name` at all."""
    if name == "fp16" and device.type != "cuda":
        raise BBNError(f"{what} fp16, which needs a CUDA device, and this one is {device.type}; {fix}")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BBNError(f"{what} bf16, which this CUDA device does not run; {fix}")


def resumed_precision(stored: dict[str, str] | str | None, configured: str, override: str | None,
                      device: torch.device) -> Precision:
    """The precision a resumed run continues in: the one its last.pt was trained in (its
    name and the reason it was chosen, `{"name", "why"}`; a checkpoint that does not record
    it: its config's `train.precision` resolved here), so a resume on the same kind of host
    stays bit-exact, final.json included; `override` (`bbn train --resume RUN --precision P`)
    changes it explicitly. A stored precision this device cannot run is a one-line error that
    names the override."""
    why = "the run's own, from its last checkpoint"
    if isinstance(stored, dict):
        stored, why = stored.get("name"), str(stored.get("why", why))
    if override is not None:
        chosen = resolve_precision(override, device)
        changed = "" if chosen.name == stored else f", was {stored}: not bit-exact with an uninterrupted run"
        return Precision(chosen.name, f"--precision {override} on resume{changed}; {chosen.why}")
    if stored is None:
        return resolve_precision(configured, device)
    if stored not in PRECISIONS:
        raise BBNError(f"the run's last checkpoint records precision '{stored}', not one of "
                       f"{', '.join(PRECISIONS)}; put back the run's own last.pt")
    check_runs(stored, device, "the run was trained in",
               "resume it on such a device, or continue in another precision with "
               "bbn train --resume RUN --precision fp32 (no longer bit-exact)")
    if stored == "bf16" and not bf16_fast(device) and "emulates" not in why:
        why += f"; this {device.type.upper()} emulates bf16, slower than fp32"
    return Precision(stored, why)


def grad_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler | None:
    """The gradient scaler of an fp16 run (None otherwise)."""
    return torch.amp.GradScaler(device.type) if precision.scaled else None


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
