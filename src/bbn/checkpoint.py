"""Checkpoints: written atomically (temp file, fsync, rename), read with weights_only=True."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from bbn.errors import BBNError


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` to `path` so that `path` is either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint`, loaded without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise BBNError(f"checkpoint '{path}' not found; pass a run folder or a .pt file written by bbn train")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BBNError(f"checkpoint '{path}' cannot be read ({reason[:120]}); it is corrupt or not a bbn checkpoint") from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise BBNError(f"checkpoint '{path}' is not a bbn checkpoint (no model/config); use one written by bbn train")
    return payload
