"""Start, continue or resume a run folder: the entry points of `bbn train` (one process or
several under torchrun), on top of the training loop of bbn.train."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bbn.checkpoint import RESUMABLE_FORMATS, load_checkpoint
from bbn.config import Config, build_config, read_yaml
from bbn.distributed import World, barrier, broadcast_object, init_world
from bbn.errors import BBNError
from bbn.models import num_params
from bbn.runs import RunDir, check_same_config, create_run_dir, default_run_path, never_trained, stopped_run
from bbn.train import build_session, fit, position, quiet_log, restore


def start_run(cfg: Config, out: str | Path | None, progress: bool = True, log=print) -> tuple[RunDir, dict[str, Any]]:
    """A new run: everything is validated before the run folder is created."""
    session = build_session(cfg)
    run = _create_shared_run_dir(session.world, out if out is not None else default_run_path(cfg), cfg)
    if not session.world.is_main:
        return run, fit(session, run, progress, log)
    log(f"run folder: {run.root}  ({len(session.data.train)} training images, "
        f"{session.data.train.num_classes} classes, {num_params(session.model):,} parameters, "
        f"device {session.device})")
    with stopped_run(run, fresh=True):  # an error before the first last.pt removes the folder again
        return run, fit(session, run, progress, log)


def _create_shared_run_dir(world: World, path: str | Path, cfg: Config) -> RunDir:
    """Rank 0 creates the run folder; every rank gets its path, or rank 0's error."""
    made: tuple[str | None, str] = (None, str(path))
    run = None
    if world.is_main:
        try:
            run = create_run_dir(path, cfg)  # knows which folders it made (removed again on an early error)
            made = (None, str(run.root))
        except BBNError as exc:
            made = (str(exc), str(path))
    error, root = broadcast_object(made, world)
    if error is not None:
        raise BBNError(error)
    return run if run is not None else RunDir(root)


def continue_run(cfg: Config, out: str | Path, progress: bool = True,
                 log=print) -> tuple[RunDir, dict[str, Any]]:
    """The run of `cfg` in folder `out`, whatever state it is in: a finished one is reused, a
    stopped one resumed, one that never finished an epoch (or none) started afresh. A folder
    made with a config that learns something else is an error."""
    run = RunDir(out)
    world, _ = init_world(cfg.train.device)
    if run.root.is_dir() and run.config.is_file() and not never_trained(run):
        check_same_config(run, cfg)
        if run.final.is_file():
            log(f"reusing the finished run {run.root}")
            return run, json.loads(run.final.read_text()) if world.is_main else {}
        return resume_run(run.root, progress=progress, log=log)
    barrier(world)  # every rank has looked before rank 0 removes a folder that never trained
    if world.is_main and run.root.is_dir() and any(run.root.iterdir()) and never_trained(run):
        shutil.rmtree(run.root)  # made, but stopped before its first checkpoint: nothing to keep
    return start_run(cfg, run.root, progress=progress, log=log)


def resume_run(path: str | Path, progress: bool = True, log=print) -> tuple[RunDir, dict[str, Any]]:
    """Continue a stopped run from its last.pt with its own config, to the same result."""
    run = RunDir(path)
    if not run.config.is_file():
        raise BBNError(f"'{run.root}' is not a run folder (no config.yaml); pass the folder bbn train wrote")
    if not run.last.is_file():
        raise BBNError(f"'{run.root}' has no checkpoints/last.pt to resume from; start it again with bbn train --out")
    cfg = build_config(read_yaml(run.config))
    payload = load_checkpoint(run.last)
    if payload.get("format") not in RESUMABLE_FORMATS:
        raise BBNError(f"checkpoint '{run.last}' has format {payload.get('format')}, this bbn resumes "
                       f"{', '.join(map(str, RESUMABLE_FORMATS))}; resume it with the bbn version that wrote it")
    session = build_session(cfg, pretrained=False)
    restore(session, payload)
    if not session.world.is_main:
        log = quiet_log
    where = position(session) if session.partial else f"after epoch {session.epoch}/{cfg.train.epochs}"
    log(f"resuming {run.root} {where}")
    with stopped_run(run, fresh=False):
        return run, fit(session, run, progress, log)
