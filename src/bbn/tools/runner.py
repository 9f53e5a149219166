"""Start, continue or resume a run folder: the entry points of `bbn train` (one process or
several under torchrun), on top of the training loop of bbn.engine.train. Rank 0 holds the run
folder's lock (RUN/.lock) from before its first write to the end; nothing here removes a
file it did not write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from bbn.engine.budget import batch_line, budget_line
from bbn.engine.checkpoint import RESUMABLE_FORMATS, load_checkpoint
from bbn.config import Config, build_config, read_yaml
from bbn.engine.distributed import World, init_world
from bbn.errors import BBNError
from bbn.engine.faults import fault_point
from bbn.models import num_params
from bbn.engine.runs import (RunDir, check_checkpoint_config, check_same_config, create_run_dir, default_run_path,
                      restart_in_place, stopped_run)
from bbn.engine.session import Trainer, TrainState, build_trainer, restore
from bbn.engine.train import fit, quiet_log
from bbn.tools.analysis import classifier_weight_norms
from bbn.tools.evaluate import evaluate_branches
from bbn.tools.report import write_report


def report_run(t: Trainer, state: TrainState, run: RunDir, final: dict[str, Any]) -> None:
    """The finish hook of `bbn train`: add the classifier weight norms and, for BBN, each
    branch evaluated alone to final.json's content, then write report.md and its plots."""
    final["weight_norms"] = classifier_weight_norms(t.model)
    notes = recipe_notes(t)
    if notes:
        final["recipe_notes"] = notes
    with t.autocast():
        branches = evaluate_branches(t.model, t.test_set, t.data.class_counts, t.cfg.train.eval_batch_size)
    if branches is not None:
        final["branches"] = branches
    fault_point("finish.evaluated")
    write_report(run.root, final, state.history, t.cfg.to_dict())
    fault_point("finish.report_written")


def start_run(cfg: Config, out: str | Path | None, progress: bool = True, log=print) -> tuple[RunDir, dict[str, Any]]:
    """A new run: everything is validated before the run folder is created."""
    path = out if out is not None else default_run_path(cfg)
    trainer = build_trainer(cfg, skip_log=RunDir(path).skipped_images)
    run = _on_rank0(trainer.world, lambda: create_run_dir(path, cfg), RunDir(path))
    try:
        return run, _fit_fresh(trainer, run, progress, log, "run folder: ")
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
    error = world.broadcast(error)
    if error is not None:
        raise BBNError(error)
    root = world.broadcast(str(run.root))
    return run if world.is_main else RunDir(root)


def _fit_fresh(t: Trainer, run: RunDir, progress: bool, log, said: str) -> dict[str, Any]:
    """Train a locked run folder holding config.yaml and no last.pt from the start."""
    if not t.world.is_main:
        return fit(t, TrainState(), run, progress, log, on_finish=report_run)
    log(f"{said}{run.root}  ({len(t.data.train)} training images, "
        f"{t.data.train.num_classes} classes, {num_params(t.model):,} parameters, "
        f"device {t.device})")
    log(t.precision.line())
    log_recipe(t, log)
    fault_point("run.created")
    with stopped_run(run, fresh=True):  # an error before the first last.pt removes what it wrote
        return fit(t, TrainState(), run, progress, log, on_finish=report_run)


def recipe_notes(t: Trainer) -> list[str]:
    """Where the run departs from its recipe, one line each: the budget's schedule and a
    global batch that is not the recipe's."""
    return [line for line in (budget_line(t.recipe or t.cfg), batch_line(t.recipe or t.cfg)) if line]


def log_recipe(t: Trainer, log) -> None:
    """Say `recipe_notes` at the start of a run (never silent)."""
    for line in recipe_notes(t):
        log(line)


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


def resume_run(path: str | Path, progress: bool = True, log=print,
               precision: str | None = None) -> tuple[RunDir, dict[str, Any]]:
    """Continue a stopped run from its last.pt with its own config and precision, to the same
    result (`precision` changes the latter explicitly); one that stopped before its first
    last.pt starts again in place."""
    run = RunDir(path)
    if not run.config.is_file():
        raise BBNError(f"'{run.root}' is not a run folder (no config.yaml); pass the folder bbn train wrote")
    cfg = build_config(read_yaml(run.config))
    world, _ = init_world(cfg.train.device)
    run = _on_rank0(world, lambda: _locked(run), run)
    try:
        if not run.last.is_file():
            trainer = build_trainer(cfg, skip_log=run.skipped_images)
            if trainer.world.is_main:
                restart_in_place(run)
            return run, _fit_fresh(trainer, run, progress, log, "restarting from the start (no checkpoint yet): ")
        payload = load_checkpoint(run.last)
        if payload.get("format") not in RESUMABLE_FORMATS:
            raise BBNError(f"checkpoint '{run.last}' has format {payload.get('format')}, this bbn resumes "
                           f"{', '.join(map(str, RESUMABLE_FORMATS))}; resume it with the bbn version that wrote it")
        check_checkpoint_config(run, cfg, payload)
        trainer = build_trainer(cfg, pretrained=False, skip_log=run.skipped_images, resumed=payload,
                                precision=precision)
        try:
            state = restore(trainer, payload)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            detail = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise BBNError(f"checkpoint '{run.last}' does not fit the model of '{run.config}' ({detail}); "
                           "put back the run's own last.pt, or start a new run with bbn train --out") from None
        if not trainer.world.is_main:
            log = quiet_log
        where = state.position() if state.partial else f"after epoch {state.epoch}/{cfg.train.epochs}"
        log(f"resuming {run.root} {where}")
        log(trainer.precision.line())  # the run's own, or the one --precision chose, and why
        log_recipe(trainer, log)
        with stopped_run(run, fresh=False):
            return run, fit(trainer, state, run, progress, log, on_finish=report_run)
    finally:
        run.lock.release()


def _locked(run: RunDir) -> RunDir:
    run.lock.acquire()
    return run
