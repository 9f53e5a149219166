"""Checkpoints that survive crashes and bit rot.

A file is `{"bbn_checkpoint": FILE_FORMAT, "sha256": hex, "payload": uint8 tensor}`: the
payload is the `torch.save` serialisation of the state dict, stored as raw bytes, and the
checksum is over those bytes.
Outer file and payload are both read with `torch.load(..., weights_only=True)`, so loading
never unpickles arbitrary objects. Writes go to a temporary file that is fsynced and then
renamed over the target, so the target is at every moment either the old complete file or
the new complete one. `keep_previous=True` first links the current file (when it passes its
checksum) to `<name>.prev.pt`; a file that fails its checksum is then reported in a
one-line warning and the previous one is loaded instead.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from bbn.errors import BBNError, first_line
from bbn.engine.faults import fault_point
from bbn.engine.release import SUFFIX as RELEASE_SUFFIX, is_safetensors, read_release
from bbn.engine.runs import write_atomically

FILE_FORMAT = 2  # 1: the bare state dict (no checksum), still readable
# The state dict's own layout. 2: + Python/NumPy RNG states and `partial` (a mid-epoch
# position). 3: every draw is keyed by its position (bbn.engine.keys): no generator or RNG
# state is saved. 1 and 2 still resume (their saved generator states are not needed).
CHECKPOINT_FORMAT = 3
RESUMABLE_FORMATS = (1, 2, 3)


class CorruptCheckpoint(BBNError):
    """A checkpoint file that cannot be read or fails its checksum."""


def previous_path(path: str | Path) -> Path:
    """Where the previous good version of `path` is kept: last.pt -> last.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def nonfinite_entries(tree: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors and floats in `tree` holding NaN or inf."""
    if isinstance(tree, torch.Tensor):
        if (tree.is_floating_point() or tree.is_complex()) and not bool(torch.isfinite(tree).all()):
            return [prefix or "<tensor>"]
        return []
    if isinstance(tree, float):
        return [] if math.isfinite(tree) else [prefix or "<float>"]
    if isinstance(tree, dict):
        return [name for key, value in tree.items() for name in nonfinite_entries(value, f"{prefix}{key}.")]
    if isinstance(tree, (list, tuple)):
        return [name for i, value in enumerate(tree) for name in nonfinite_entries(value, f"{prefix}{i}.")]
    return []


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename_checkpoint(tmp: Path, path: Path) -> None:
    """The new checkpoint, whole and fsynced in `tmp`, replaces `path` (private permissions kept)."""
    fault_point("checkpoint.temp_written")
    os.replace(tmp, path)


def _keep_as_previous(path: Path) -> None:
    """Make `previous_path(path)` the current `path` (a hard link, else a copy), atomically."""
    prev = previous_path(path)
    tmp = path.with_name(f".{prev.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links on this file system
        write_atomically(prev, lambda f: f.write(path.read_bytes()), _rename_checkpoint)
        return
    try:
        os.replace(tmp, prev)
    finally:
        tmp.unlink(missing_ok=True)  # left when prev already was this very file: rename does nothing


def save_checkpoint(payload: dict[str, Any], path: str | Path, keep_previous: bool = False) -> None:
    """Write `payload` to `path` so that `path` is either the old file or the complete new one.

    A payload holding a non-finite float is refused (BBNError), so no checkpoint ever
    carries NaN or inf. With `keep_previous`, the current file, if it passes its checksum,
    becomes `previous_path(path)` first.
    """
    path = Path(path)
    bad = nonfinite_entries(payload)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise BBNError(f"refusing to write checkpoint '{path}': {bad[0].rstrip('.')}{more} holds NaN or inf; "
                       "the previous checkpoint is kept, lower train.lr or set train.on_nonfinite=skip")
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    container = {"bbn_checkpoint": FILE_FORMAT, "sha256": hashlib.sha256(data).hexdigest(),
                 "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)}
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in (path.name, previous_path(path).name):  # left by a process killed while writing
        for stale in path.parent.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
    if keep_previous and path.is_file():
        try:
            _read(path)
        except CorruptCheckpoint:
            pass  # never let a damaged file replace the previous good one
        else:
            _keep_as_previous(path)
            fault_point("checkpoint.previous_kept")
    write_atomically(path, lambda f: torch.save(container, f), _rename_checkpoint)
    _fsync_dir(path.parent)


def _read(path: Path) -> dict[str, Any]:
    """The state dict in `path`; CorruptCheckpoint when it is unreadable or fails its checksum."""
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise CorruptCheckpoint(f"checkpoint '{path}' cannot be read ({first_line(exc)})") from None
    if isinstance(outer, dict) and "bbn_checkpoint" in outer:
        if outer["bbn_checkpoint"] != FILE_FORMAT:
            raise BBNError(f"checkpoint '{path}' has file format {outer['bbn_checkpoint']!r}, this bbn reads "
                           f"{FILE_FORMAT}; evaluate it with the bbn version that wrote it")
        raw = outer.get("payload")
        data = raw.numpy().tobytes() if isinstance(raw, torch.Tensor) and raw.dtype == torch.uint8 else b""
        if hashlib.sha256(data).hexdigest() != outer.get("sha256"):
            raise CorruptCheckpoint(f"checkpoint '{path}' fails its checksum")
        try:
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CorruptCheckpoint(f"checkpoint '{path}' cannot be read ({first_line(exc)})") from None
    else:
        payload = outer  # file format 1: the state dict itself, without a checksum
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise CorruptCheckpoint(f"checkpoint '{path}' holds no model and config")
    return payload


def _warn(message: str) -> None:
    print(f"bbn: warning: {message}", file=sys.stderr)


def exported_format(path: Path) -> str | None:
    """"TorchScript" or "ONNX" when `path` is such a model file (as `bbn export` writes),
    else None; judged from the file's structure, nothing is loaded."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            return "TorchScript" if any(n.endswith("/constants.pkl") or "/code/" in n for n in names) else None
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    # ONNX's ModelProto starts with field 1 (ir_version, a varint), then another field of it
    if len(head) < 3 or head[0] != 0x08:
        return None
    end = next((i for i in range(1, min(len(head), 11)) if head[i] < 0x80), None)
    tag = head[end + 1] if end is not None and end + 1 < len(head) else 0
    return "ONNX" if tag & 7 == 2 and 2 <= tag >> 3 <= 20 else None


def load_checkpoint(path: str | Path, warn: Callable[[str], None] = _warn) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint`, loaded without unpickling arbitrary objects,
    or a weights-only release file (`bbn.engine.release.read_release`), as a payload.

    When `path` is unreadable or fails its checksum and `previous_path(path)` is good, the
    previous one is returned and `warn` gets one line naming both files.
    """
    path = Path(path)
    if not path.is_file():
        raise BBNError(f"checkpoint '{path}' not found; pass a run folder or a .pt file written by bbn train")
    if path.suffix == RELEASE_SUFFIX or is_safetensors(path):  # a release file (bbn.engine.release)
        return read_release(path)
    try:
        return _read(path)
    except CorruptCheckpoint as exc:
        prev = previous_path(path)
        if not prev.is_file():
            kind = exported_format(path)
            if kind is not None:
                raise BBNError(f"'{path}' is an exported {kind} model (bbn export), not a bbn checkpoint; pass "
                               "the run folder or the bbn checkpoint (.pt from bbn train or bbn import-reference) "
                               "it was exported from") from None
            raise BBNError(f"{exc}; it is corrupt or not a bbn checkpoint; use a checkpoint written by "
                           "bbn train, or start the run again") from None
        try:
            payload = _read(prev)
        except CorruptCheckpoint:
            raise BBNError(f"{exc}; the previous one '{prev.name}' is damaged too: both are corrupt or not bbn "
                           "checkpoints; use a checkpoint written by bbn train, or start the run again") from None
        warn(f"{exc}; using the previous one '{prev}'")
        return payload
