"""Weights-only release files (`bbn export --format safetensors`).

A release file is a safetensors file: the network's state dict (floating-point tensors as
float32, integer buffers as they are) and, in the header's metadata, one JSON entry `bbn`
holding what a checkpoint holds besides the weights, minus any training state: the
resolved config, the class names, the input description, the logit scale (and the
checkpoint's epoch and import note when it had them), and the state dict's key order
(safetensors stores tensors sorted). No optimiser or scheduler state.
`read_release` returns it as a checkpoint payload, so every command that loads a
checkpoint for inference loads a release file as well.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from bbn.errors import BBNError, first_line

RELEASE_FORMAT = "bbn-release"
RELEASE_VERSION = 1
SUFFIX = ".safetensors"
_HEADER_LIMIT = 100 << 20  # safetensors' own bound on the JSON header
_AGAIN = "write it again with bbn export RUN --format safetensors --out FILE.safetensors"


def is_safetensors(path: str | Path) -> bool:
    """Whether `path` starts like a safetensors file: an 8-byte little-endian header length
    that fits the file, then a JSON object. Only the first 9 bytes are read."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            f.seek(0, 2)
            size = f.tell()
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= _HEADER_LIMIT and 8 + n <= size and head[8:9] == b"{"


def release_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a release file stores: floating-point tensors as float32, each its own
    contiguous copy (safetensors refuses tensors that share memory)."""
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous().clone()
            for k, v in model.state_dict().items()}


def write_release(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write `state` with `meta` (the `bbn` entry, JSON) to `path` as safetensors."""
    from safetensors.torch import save_file

    meta = {"format": RELEASE_FORMAT, "version": RELEASE_VERSION, **meta, "state_keys": list(state)}
    save_file(state, str(path), metadata={"bbn": json.dumps(meta)})


def _meta(raw: dict[str, str] | None, path: Path) -> dict[str, Any]:
    if not raw or "bbn" not in raw:
        raise BBNError(f"'{path}' is a safetensors file without bbn metadata (bare weights); pass a file "
                       f"written by bbn export --format safetensors, or use it as model.pretrained")
    try:
        meta = json.loads(raw["bbn"])
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != RELEASE_FORMAT or not isinstance(meta.get("config"), dict):
        raise BBNError(f"'{path}' has a malformed bbn metadata entry; {_AGAIN}")
    if not isinstance(meta.get("version"), int) or meta["version"] > RELEASE_VERSION:
        raise BBNError(f"'{path}' is a release file of version {meta.get('version')!r}, this bbn reads "
                       f"{RELEASE_VERSION}; use the bbn version that wrote it")
    return meta


def read_release(path: str | Path) -> dict[str, Any]:
    """A release file as a checkpoint payload: {"config", "model", "class_names", "input",
    "logit_scale", "release": True, ...}; BBNError (one line) for a damaged or foreign file."""
    from bbn.engine.checkpoint import nonfinite_entries

    path = Path(path)
    try:
        from safetensors import safe_open
    except ImportError:
        raise BBNError(f"reading '{path}' needs the safetensors package; "
                       "install the export extra: pip install 'bbn[export]'") from None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = f.metadata()
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error type, and OSError
        raise BBNError(f"'{path}' cannot be read as a safetensors file ({first_line(exc)}); it is damaged "
                       f"or not a release file; {_AGAIN}") from None
    meta = _meta(raw, path)
    order = meta.get("state_keys")
    if not isinstance(order, list) or sorted(order) != sorted(state):
        raise BBNError(f"'{path}' holds other tensors than its metadata lists; it is damaged; {_AGAIN}")
    state = {k: state[k] for k in order}  # the network's order (safetensors sorts its tensors)
    bad = nonfinite_entries(state)
    if bad:
        raise BBNError(f"'{path}' holds NaN or inf in '{bad[0].rstrip('.')}'; it is damaged; {_AGAIN}")
    payload = {k: meta[k] for k in ("config", "class_names", "input", "logit_scale", "epoch", "imported_from")
               if meta.get(k) is not None}
    return {**payload, "model": state, "release": True}
