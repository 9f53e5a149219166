"""The run folder contract (DESIGN.md): config.yaml, metrics.jsonl, final.json,
checkpoints/last.pt and best.pt, report.md with plots."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from bbn.config import Config, build_config, read_yaml, save_config
from bbn.errors import BBNError


class RunDir:
    """Paths of one run folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.created: Path | None = None  # the outermost folder create_run_dir made, if any

    config = property(lambda self: self.root / "config.yaml")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    final = property(lambda self: self.root / "final.json")
    checkpoints = property(lambda self: self.root / "checkpoints")
    last = property(lambda self: self.root / "checkpoints" / "last.pt")
    best = property(lambda self: self.root / "checkpoints" / "best.pt")
    tensorboard = property(lambda self: self.root / "tensorboard")
    skipped_images = property(lambda self: self.root / "skipped_images.txt")  # unreadable image files


# Keys that change how a run is executed, not what it learns: a reused run may differ in them.
# (The memory format and compilation change float rounding only, not the computation.)
EXECUTION_KEYS = frozenset({"train.threads", "train.tensorboard", "train.log_every", "train.device",
                            "train.eval_batch_size", "train.channels_last", "train.compile", "name",
                            "data.workers"})


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
    known = {run.config, run.checkpoints, run.tensorboard, run.skipped_images}
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
    run.created = _first_missing(run.root)
    try:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
    except OSError as exc:
        discard_run(run)
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


def publish(tmp: Path, out: Path) -> None:
    """Give a finished temporary file the usual permissions (0666 less the umask; temporary
    files are private) and rename it over `out`."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, out)


def write_text_atomically(path: Path, text: str) -> None:
    """`path` is the old file or the whole new one; a failed write leaves no temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temp file + rename)."""
    write_text_atomically(path, json.dumps(obj, indent=2) + "\n")


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl: one JSON object per finished epoch (rewritten whole, atomically)."""
    write_text_atomically(path, "".join(json.dumps(row) + "\n" for row in history))


def discard_run(run: RunDir) -> None:
    """Remove what `create_run_dir` made: its outermost new folder, or the contents of a
    folder that existed (empty) before."""
    if run.created is not None:
        shutil.rmtree(run.created, ignore_errors=True)
    elif run.root.is_dir():
        for child in run.root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def os_error_behind(exc: BaseException | None) -> OSError | None:
    """`exc` if it is an OSError, else the OSError it was raised while handling (torch's
    checkpoint writer turns a full disk into a RuntimeError)."""
    for _ in range(8):
        if exc is None or isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return None


@contextmanager
def stopped_run(run: RunDir, fresh: bool) -> Iterator[None]:
    """Training that stops on an error: an OSError (a full disk, a read-only folder) becomes
    a one-line BBNError, and a `fresh` run with nothing to resume from (no last.pt) is
    removed, as if never started. Checkpoints are written atomically, so a kept last.pt is
    whole and `bbn train --resume` continues from it."""
    try:
        yield
    except Exception as error:
        exc = error if isinstance(error, BBNError) else os_error_behind(error)
        if exc is None:
            raise
        resumable = run.last.is_file()
        if fresh and not resumable:
            discard_run(run)
        if isinstance(exc, BBNError):
            raise
        cause = "free disk space" if exc.errno in _NO_SPACE else (
            f"make '{run.root}' writable" if exc.errno in _NOT_WRITABLE else "check the disk")
        then = (f"then continue with 'bbn train --resume {run.root}' (checkpoints/last.pt is intact)"
                if resumable else "then start the run again (the unfinished run folder was removed)")
        raise BBNError(f"cannot write the run folder '{run.root}' ({exc.strerror or exc}); {cause}, {then}") from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
