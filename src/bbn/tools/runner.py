"""Start, continue or resume a run folder: the entry points of `bbn train` (one process or
several under torchrun), on top of the training loop of bbn.engine.train. Rank 0 holds the run
folder's lock (RUN/.lock) from before its first write to the end; nothing here removes a
file it did not write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from bbn.engine.checkpoint import RESUMABLE_FORMATS, load_checkpoint
from bbn.config import Config, build_config, read_yaml
from bbn.engine.distributed import World, broadcast_object, init_world
from bbn.errors import BBNError
from bbn.engine.faults import fault_point
from bbn.models import num_params
from bbn.engine.runs import (RunDir, check_checkpoint_config, check_same_config, create_run_dir, default_run_path,
                      restart_in_place, stopped_run)
from bbn.engine.train import Session, build_session, fit, position, quiet_log, restore
from bbn.tools.analysis import classifier_weight_norms
from bbn.tools.evaluate import evaluate_branches
from bbn.tools.report import write_report


def report_run(s: Session, run: RunDir, final: dict[str, Any]) -> None:
    """The finish hook of `bbn train`: add the classifier weight norms and, for BBN, each
    branch evaluated alone to final.json's content, then write report.md and its plots."""
    final["weight_norms"] = classifier_weight_norms(s.model)
    with s.autocast():
        branches = evaluate_branches(s.model, s.test_set, s.data.class_counts, s.cfg.train.eval_batch_size)
    if branches is not None:
        final["branches"] = branches
    fault_point("finish.evaluated")
    write_report(run.root, final, s.history, s.cfg.to_dict())
    fault_point("finish.report_written")


def start_run(cfg: Config, out: str | Path | None, progress: bool = True, log=print) -> tuple[RunDir, dict[str, Any]]:
    """A new run: everything is validated before the run folder is created."""
    session = build_session(cfg)
    path = out if out is not None else default_run_path(cfg)
    run = _on_rank0(session.world, lambda: create_run_dir(path, cfg), RunDir(path))
    try:
        return run, _fit_fresh(session, run, progress, log, "run folder: ")
    finally:
        run.lock.release()


def _on_rank0(world: World, make: Callable[[], RunDir], other: RunDir) -> RunDir:
    """`make()` on rank 0 (which creates or locks the folder); every rank gets rank 0's error."""
    run, error = other, None
    if world.is_main:
        try:
            run = make()
        except BBNError as exc:
            error = str(exc)
    error = broadcast_object(error, world)
    if error is not None:
        raise BBNError(error)
    root = broadcast_object(str(run.root), world)
    return run if world.is_main else RunDir(root)


def _fit_fresh(session: Session, run: RunDir, progress: bool, log, said: str) -> dict[str, Any]:
    """Train a locked run folder holding config.yaml and no last.pt from the start."""
    if not session.world.is_main:
        return fit(session, run, progress, log, on_finish=report_run)
    log(f"{said}{run.root}  ({len(session.data.train)} training images, "
        f"{session.data.train.num_classes} classes, {num_params(session.model):,} parameters, "
        f"device {session.device})")
    fault_point("run.created")
    with stopped_run(run, fresh=True):  # an error before the first last.pt removes what it wrote
        return fit(session, run, progress, log, on_finish=report_run)


def continue_run(cfg: Config, out: str | Path, progress: bool = True,
                 log=print) -> tuple[RunDir, dict[str, Any]]:
    """The run of `cfg` in folder `out`, whatever state it is in: a finished one is reused, a
    stopped one resumed (from the start when it stopped before its first checkpoint), a
    missing or empty one started. A folder made with a config that learns something else is
    an error; nothing is deleted."""
    run = RunDir(out)
    world, _ = init_world(cfg.train.device)
    if run.root.is_dir() and run.config.is_file():
        check_same_config(run, cfg)
        if run.final.is_file():
            log(f"reusing the finished run {run.root}")
            return run, json.loads(run.final.read_text()) if world.is_main else {}
        return resume_run(run.root, progress=progress, log=log)
    return start_run(cfg, run.root, progress=progress, log=log)


def resume_run(path: str | Path, progress: bool = True, log=print) -> tuple[RunDir, dict[str, Any]]:
    """Continue a stopped run from its last.pt with its own config, to the same result; one
    that stopped before its first last.pt starts again in place."""
    run = RunDir(path)
    if not run.config.is_file():
        raise BBNError(f"'{run.root}' is not a run folder (no config.yaml); pass the folder bbn train wrote")
    cfg = build_config(read_yaml(run.config))
    world, _ = init_world(cfg.train.device)
    run = _on_rank0(world, lambda: _locked(run), run)
    try:
        if not run.last.is_file():
            session = build_session(cfg)
            if session.world.is_main:
                restart_in_place(run)
            return run, _fit_fresh(session, run, progress, log, "restarting from the start (no checkpoint yet): ")
        payload = load_checkpoint(run.last)
        if payload.get("format") not in RESUMABLE_FORMATS:
            raise BBNError(f"checkpoint '{run.last}' has format {payload.get('format')}, this bbn resumes "
                           f"{', '.join(map(str, RESUMABLE_FORMATS))}; resume it with the bbn version that wrote it")
        check_checkpoint_config(run, cfg, payload)
        session = build_session(cfg, pretrained=False)
        try:
            restore(session, payload)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            detail = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise BBNError(f"checkpoint '{run.last}' does not fit the model of '{run.config}' ({detail}); "
                           "put back the run's own last.pt, or start a new run with bbn train --out") from None
        if not session.world.is_main:
            log = quiet_log
        where = position(session) if session.partial else f"after epoch {session.epoch}/{cfg.train.epochs}"
        log(f"resuming {run.root} {where}")
        with stopped_run(run, fresh=False):
            return run, fit(session, run, progress, log, on_finish=report_run)
    finally:
        run.lock.release()


def _locked(run: RunDir) -> RunDir:
    run.lock.acquire()
    return run
