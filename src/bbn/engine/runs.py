"""The run folder contract (DESIGN.md): config.yaml, metrics.jsonl, final.json,
checkpoints/last.pt and best.pt, report.md with plots, and .lock, held by the one process
that works on the folder."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from bbn.config import Config, build_config, dump_config, read_yaml
from bbn.errors import BBNError


class RunDir:
    """Paths of one run folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.created: Path | None = None  # the outermost folder create_run_dir made, if any
        self.before: frozenset[str] | None = None  # names in the folder before this process wrote any
        self.lock = RunLock(self.root)

    config = property(lambda self: self.root / "config.yaml")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    final = property(lambda self: self.root / "final.json")
    checkpoints = property(lambda self: self.root / "checkpoints")
    last = property(lambda self: self.root / "checkpoints" / "last.pt")
    best = property(lambda self: self.root / "checkpoints" / "best.pt")
    tensorboard = property(lambda self: self.root / "tensorboard")
    skipped_images = property(lambda self: self.root / "skipped_images.txt")  # unreadable image files


LOCK_NAME = ".lock"
# What a run writes before its first last.pt: all `discard_run` may remove, and only those of
# them that were not there before (the temporary names are bbn's own).
EARLY_NAMES = ("config.yaml", ".config.yaml.tmp", "checkpoints", "tensorboard", "skipped_images.txt", LOCK_NAME)


class RunLock:
    """An exclusive `flock` on RUN/.lock (holding the holder's process id), so that one process
    at a time trains a run folder. The kernel drops it when the process ends, killed or not."""

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        """Hold the lock, or raise a BBNError naming the process that holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in _NOT_WRITABLE:
                return  # a folder nobody can write: nothing to guard (writing fails in one line)
            raise BBNError(f"cannot open '{self.path}' ({exc.strerror or exc}); check the run folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise BBNError(f"run folder '{self.path.parent}' is in use by process {holder} (it holds "
                           f"{self.path}); wait for that process to end or stop it, or choose another --out") from None
        except OSError:  # a file system without locks: run unguarded, as before
            os.close(fd)
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # an empty .lock: no process holds the folder
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None


# Keys that change how a run is executed, not what it learns: a reused run may differ in them.
# (The memory format and compilation change float rounding only, not the computation.)
EXECUTION_KEYS = frozenset({"train.threads", "train.tensorboard", "train.log_every", "train.device",
                            "train.eval_batch_size", "train.channels_last", "train.compile", "name",
                            "data.workers"})


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config dict: {"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _first_difference(saved: dict[str, Any], wanted: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first key (execution-only keys aside) whose values differ: (key, saved, wanted)."""
    saved, wanted = flatten(saved), flatten(wanted)
    for key in wanted:
        if key not in EXECUTION_KEYS and saved.get(key) != wanted[key]:
            return key, saved.get(key), wanted[key]
    return None


def check_same_config(run: RunDir, cfg: Config) -> None:
    """A run folder may be reused or resumed only if it learns what `cfg` asks for."""
    diff = _first_difference(build_config(read_yaml(run.config)).to_dict(), cfg.to_dict())
    if diff is not None:
        key, saved, wanted = diff
        raise BBNError(f"'{run.root}' was trained with {key}={saved!r}, not {wanted!r}; "
                       "choose another --out or delete that folder")


def check_checkpoint_config(run: RunDir, cfg: Config, payload: dict[str, Any]) -> None:
    """last.pt continues the run of config.yaml only if it was trained with that config
    (execution-only keys aside): an edited config.yaml or another run's last.pt is refused."""
    try:
        saved = build_config(payload["config"]).to_dict()
    except (BBNError, TypeError, ValueError):
        saved = payload["config"] if isinstance(payload["config"], dict) else {}
    diff = _first_difference(saved, cfg.to_dict())
    if diff is not None:
        key, saved_value, wanted = diff
        raise BBNError(f"'{run.config}' says {key}={wanted!r} but '{run.last}' was trained with {saved_value!r}; "
                       f"set {key} back in config.yaml (or put back the run's own last.pt), or start a new run "
                       "with bbn train --out")


def default_run_path(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _is_leftover(path: Path) -> bool:
    """bbn's own empty remains of a run folder stopped while it was being created."""
    if path.name == "checkpoints":
        return path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    return path.name in (LOCK_NAME, ".config.yaml.tmp")


def create_run_dir(path: str | Path, cfg: Config) -> RunDir:
    """Create a fresh run folder holding config.yaml, and lock it (released by the caller).
    An existing folder holding anything but bbn's own empty remains is an error (never
    overwritten, never a question)."""
    run = RunDir(path)
    if run.root.exists() and not run.root.is_dir():
        raise BBNError(f"--out '{run.root}' is a file, not a folder; choose a folder (new or empty) for the run")
    if run.root.is_dir() and not all(_is_leftover(p) for p in run.root.iterdir()):
        raise _exists(run)
    run.created = _first_missing(run.root)
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        before = frozenset(p.name for p in run.root.iterdir())
        run.lock.acquire()
        if not all(_is_leftover(p) for p in run.root.iterdir()):  # made by another process meanwhile
            run.lock.release()
            raise _exists(run)
        run.before = before
        run.checkpoints.mkdir(exist_ok=True)
        write_config(run, cfg)
    except OSError as exc:
        discard_run(run)
        raise BBNError(
            f"cannot write the run folder '{run.root}' ({exc.strerror or exc}); choose a writable --out"
        ) from None
    return run


def _exists(run: RunDir) -> BBNError:
    if run.config.is_file():
        return BBNError(f"run folder '{run.root}' already exists; continue it with "
                        f"'bbn train --resume {run.root}' or choose another --out")
    return BBNError(f"'{run.root}' is not empty and holds no bbn run (no config.yaml); "
                    "choose a new or empty folder for --out")


def write_config(run: RunDir, cfg: Config) -> None:
    """config.yaml, written whole or not at all; a closing comment gives the schedule the run
    trains with when a budget or the batch makes it differ from the recipe (bbn.engine.budget)."""
    from bbn.engine.budget import schedule_comment

    tmp = run.root / ".config.yaml.tmp"
    tmp.write_text(dump_config(cfg) + schedule_comment(cfg))
    os.replace(tmp, run.config)


def restart_in_place(run: RunDir) -> None:
    """Prepare a locked run folder that stopped before its first last.pt for a fresh start:
    its config.yaml is kept, and so is every file that is already there."""
    run.before = frozenset(p.name for p in run.root.iterdir())
    run.checkpoints.mkdir(exist_ok=True)


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


def write_atomically(path: Path, write: Callable[[BinaryIO], None],
                     rename: Callable[[Path, Path], None] = publish) -> Path:
    """`write(f)` into a temporary file beside `path`, fsync it, then `rename(tmp, path)`
    (default `publish`). A failure (a full disk, say) leaves the old file, or none, and no
    temporary file."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
    """Remove what this process wrote into a run that stopped before its first last.pt: the
    names of EARLY_NAMES that were not there before (`run.before`), then the folders it
    created when empty. Nothing else is ever removed."""
    if run.root.is_dir():
        before = run.before or frozenset()
        for name in EARLY_NAMES:
            child = run.root / name
            if name in before:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    run.lock.release()
    if run.created is not None:
        for folder in (run.root, *run.root.parents):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
            if folder == run.created:
                break


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
                if resumable else "then start the run again (the unfinished run folder was removed)" if not run.root.exists()
                else "then start the run again (what the unfinished run wrote was removed)")
        raise BBNError(f"cannot write the run folder '{run.root}' ({exc.strerror or exc}); {cause}, {then}") from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
