"""The run folder contract (DESIGN.md): config.yaml, metrics.jsonl, final.json,
checkpoints/last.pt and best.pt, report.md with plots."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bbn.config import Config, build_config, read_yaml, save_config
from bbn.errors import BBNError


class RunDir:
    """Paths of one run folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    final = property(lambda self: self.root / "final.json")
    checkpoints = property(lambda self: self.root / "checkpoints")
    last = property(lambda self: self.root / "checkpoints" / "last.pt")
    best = property(lambda self: self.root / "checkpoints" / "best.pt")
    tensorboard = property(lambda self: self.root / "tensorboard")


# Keys that change how a run is executed, not what it learns: a reused run may differ in them.
# (The memory format and compilation change float rounding only, not the computation.)
EXECUTION_KEYS = frozenset({"train.threads", "train.tensorboard", "train.log_every", "train.device",
                            "train.eval_batch_size", "train.channels_last", "train.compile", "name"})


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def check_same_config(run: RunDir, cfg: Config) -> None:
    """A run folder may be reused or resumed only if it learns what `cfg` asks for."""
    saved = _flatten(build_config(read_yaml(run.config)).to_dict())
    wanted = _flatten(cfg.to_dict())
    for key in wanted:
        if key not in EXECUTION_KEYS and saved.get(key) != wanted[key]:
            raise BBNError(f"'{run.root}' was trained with {key}={saved.get(key)!r}, not {wanted[key]!r}; "
                           "choose another --out or delete that folder")


def never_trained(run: RunDir) -> bool:
    """The folder was created but stopped before its first epoch was written: nothing to keep."""
    if run.last.is_file() or run.metrics.is_file() or run.final.is_file():
        return False
    known = {run.config, run.checkpoints, run.tensorboard}
    return all(p in known for p in run.root.iterdir()) and not any(run.checkpoints.glob("*.pt"))


def default_run_path(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def create_run_dir(path: str | Path, cfg: Config) -> RunDir:
    """Create a fresh run folder holding config.yaml. An existing non-empty folder is an
    error (never overwritten, never a question)."""
    run = RunDir(path)
    if run.root.exists() and (not run.root.is_dir() or any(run.root.iterdir())):
        raise BBNError(
            f"run folder '{run.root}' already exists; continue it with "
            f"'bbn train --resume {run.root}' or choose another --out"
        )
    created = _first_missing(run.root)
    try:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
    except OSError as exc:
        if created is not None and created.is_dir():
            shutil.rmtree(created, ignore_errors=True)
        raise BBNError(
            f"cannot write the run folder '{run.root}' ({exc.strerror or exc}); choose a writable --out"
        ) from None
    return run


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what mkdir -p would create)."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl: one JSON object per finished epoch (rewritten whole, atomically)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
