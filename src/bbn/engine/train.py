"""The training loop: epochs, the warm-up multi-step schedule, evaluation, checkpoints and
metrics in the run folder (bbn.tools.runner starts, continues and resumes runs; the
components come from bbn.engine.session). Nothing here is method-specific (the method
plans the epoch and gives the loss) or distributed-specific (the World's collectives are
the identity for one process)."""

from __future__ import annotations

import platform
import signal
import sys
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from bbn.engine import preemption
from bbn.engine.checkpoint import load_checkpoint, save_checkpoint
from bbn.engine.evaluate import evaluate
from bbn.engine.faults import fault_point
from bbn.engine.metrics import SHOT_GROUPS
from bbn.engine.keys import Draw, keyed_generator, keyed_seed, seed_global
from bbn.engine.nonfinite import NonFiniteLoss, grads_finite
from bbn.engine.optim import learning_rate, set_lr
from bbn.engine.provenance import device_label, source_commit
from bbn.engine.results import write_results
from bbn.engine.runs import RunDir, write_metrics
from bbn.engine.session import Trainer, TrainState, checkpoint_of
from bbn.engine.tally import EpochTally
from bbn.errors import BBNError, Preempted
from bbn.methods import Batch, StepContext
from bbn.models import num_params
from bbn.samplers import Plan


def planned_steps(t: Trainer, epoch: int, plan: Plan, first: int) -> list[list[tuple[torch.Tensor, int]]]:
    """This rank's share of each step of `plan` from the 1-based step `first` on, each
    stream's indices with the seed of its augmentation draws."""
    cfg, world = t.cfg, t.world
    return [[(idx, keyed_seed(cfg.seed, Draw.AUGMENT, epoch, i, world.rank, s)) for s, idx in enumerate(world.shard(b))]
            for i, b in enumerate(plan[first - 1:], first)]


def train_epoch(t: Trainer, state: TrainState, progress: bool, max_steps: int | None = None) -> dict[str, Any]:
    """One epoch (or its first `max_steps` steps, for benchmarks), from where `state.partial`
    stands; the host waits only every `log_every` steps (every step with on_nonfinite=skip).
    Every draw is keyed by (seed, epoch, step, rank) (bbn.engine.keys), so a resumed epoch
    redraws its plan and continues at its next step. A stop request (SIGTERM / SIGINT) ends
    the epoch after the current step with `state.partial` set and `Preempted` raised."""
    cfg, world, epoch = t.cfg, t.world, state.epoch + 1
    skip = cfg.train.on_nonfinite == "skip"
    lr = learning_rate(epoch, cfg.train)
    set_lr(t.optimizer, lr)
    plan = t.method.plan(epoch, keyed_generator(cfg.seed, Draw.PLAN, epoch))[:max_steps]
    tally = EpochTally(epoch, len(plan), t.device, world, state.partial)
    state.partial = None
    logged = t.method.logged(epoch)
    bar = tqdm(total=tally.steps, initial=tally.done, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False,
               disable=not progress, dynamic_ncols=True, file=sys.stderr)
    t.model.train()
    with bar:
        batches = t.train_set.train_batches(planned_steps(t, epoch, plan, tally.done + 1))
        for i, streams in enumerate(batches, tally.done + 1):
            seed_global(cfg.seed, epoch, i, world.rank, t.device)
            batch, ctx = Batch.of(streams), StepContext(epoch, i, keyed_generator(cfg.seed, Draw.STEP, epoch, i))
            with t.autocast():
                out = t.step(t.method, batch, ctx)
            t.optimizer.zero_grad(set_to_none=True)
            (out.loss if t.scaler is None else t.scaler.scale(out.loss)).backward()
            # fp16: the scaler itself skips a step whose scaled gradients overflow, so only the loss is checked
            if skip and not world.all_true(bool(torch.isfinite(out.loss))
                                           and (t.scaler is not None or grads_finite(t.model))):
                tally.skip()
            elif t.scaler is not None:
                t.scaler.step(t.optimizer)
                t.scaler.update()
                tally.add(i, out, batch.labels())
            else:
                t.optimizer.step()
                tally.add(i, out, batch.labels())
            if i % cfg.train.log_every == 0 or i == tally.steps:
                bar.set_postfix({**tally.shown(i), **{k: f"{v:.3f}" for k, v in logged.items() if v is not None}},
                                refresh=False)
            bar.update(1)
            fault_point("train.step")
            if world.agree(preemption.requested() is not None) and i < tally.steps:
                state.partial = tally.partial(i)
                raise Preempted(f"at epoch {epoch}, step {i}/{tally.steps}")
    summary = tally.summary()
    return {"epoch": epoch, "alpha": None, **logged, "lr": lr, **summary}


def _log_line(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.4f}",
             f"acc {row['train_acc']:.2f}%", f"lr {row['lr']:.4g}"]
    if row["alpha"] is not None:
        parts.append(f"alpha {row['alpha']:.3f}")
    if row["val_top1"] is not None:
        parts.append(f"val top-1 {row['val_top1']:.2f}%")
    parts.append(f"{row['images_per_s']:.0f} img/s, {row['epoch_s']:.1f}s")
    return "  ".join(parts)


def _tensorboard(run: RunDir, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(run.tensorboard))


# What an evaluated epoch records in its metrics row (as val_<name>, on the selection split:
# the validation split, else the test set; None on other epochs).
VALIDATED = ("top1", *SHOT_GROUPS)

# Called by `finish` with the run's components and state, its run folder and final.json's
# content before final.json is written: what the tools add (reports, analyses) without the
# engine knowing them.
FinishHook = Callable[[Trainer, TrainState, RunDir, dict[str, Any]], None]


def fit(t: Trainer, state: TrainState, run: RunDir, progress: bool = True, log=print,
        on_finish: FinishHook | None = None) -> dict[str, Any]:
    """Train from `state` to the configured number of epochs, writing the run folder.

    SIGTERM / SIGINT stop it after the current step with last.pt written and `Preempted`
    raised; a non-finite loss (train.on_nonfinite=stop) ends it with a BBNError naming the
    step and the last good checkpoint. With several processes, rank 0 alone evaluates and
    writes; the others train their shares and return {}. `on_finish` (rank 0) may add to
    final.json and write reports before final.json marks the run finished.
    """
    cfg, main = t.cfg, t.world.is_main
    if not main:
        progress, log = False, quiet_log
    if state.history and main:  # metrics.jsonl and best.pt agree with last.pt, whatever moment a kill hit
        write_metrics(run.metrics, state.history)
        _complete_best(t, state, run)
    saved = state.position() if run.last.is_file() else None
    writer = _tensorboard(run, cfg.train.tensorboard and main)
    try:
        with preemption.stop_requests():
            try:
                while state.epoch < cfg.train.epochs:
                    if t.world.agree(preemption.requested() is not None):
                        raise Preempted(f"after epoch {state.epoch}")
                    row = train_epoch(t, state, progress)
                    saved = _end_epoch(t, state, run, row, writer)
                    log(_log_line(row, cfg.train.epochs))
            except Preempted as stop:
                if main:
                    save_checkpoint(checkpoint_of(t, state), run.last, keep_previous=True)
                name = signal.Signals(preemption.requested() or signal.SIGTERM).name
                raise Preempted(f"stopped by {name} {stop}; wrote {run.last}; continue with "
                                f"'bbn train --resume {run.root}'") from None
            return finish(t, state, run, on_finish)
    except NonFiniteLoss as exc:
        where = f"'{run.last}' ({saved})" if saved else "none (no checkpoint was written yet)"
        fix = "lower train.lr" + ("" if cfg.train.on_nonfinite == "skip" else
                                  ", or set train.on_nonfinite=skip to skip such steps")
        raise NonFiniteLoss(f"{exc}; last good checkpoint: {where}; {fix}") from None
    finally:
        if writer is not None:
            writer.close()


def quiet_log(*_: Any) -> None:
    """The log of ranks other than 0."""


def _complete_best(t: Trainer, state: TrainState, run: RunDir) -> None:
    """Write best.pt when last.pt is the best epoch and best.pt does not hold it yet: a kill
    between the two writes of `_end_epoch` (last.pt is the run's commit point)."""
    if state.partial is not None or state.epoch == 0 or state.best_epoch != state.epoch:
        return
    try:
        if run.best.is_file() and load_checkpoint(run.best, warn=quiet_log)["epoch"] == state.epoch:
            return
    except BBNError:
        pass  # unreadable: written again below
    save_checkpoint(checkpoint_of(t, state), run.best)


def _end_epoch(t: Trainer, state: TrainState, run: RunDir, row: dict[str, Any], writer: Any) -> str:
    """Evaluate when due, then write last.pt (the commit point: a resume starts from it),
    best.pt and metrics.jsonl, both derived from it and completed by a resume (rank 0; the
    other ranks wait); returns where last.pt stands."""
    cfg = t.cfg
    state.epoch = row["epoch"]
    state.train_s += row["epoch_s"]
    row.update(dict.fromkeys(f"val_{key}" for key in VALIDATED))  # every rank's row has every key
    if not t.world.is_main:
        state.history.append(row)
        t.world.barrier()
        return state.position()
    is_best = False
    if state.epoch % cfg.train.eval_every == 0 or state.epoch == cfg.train.epochs:
        with t.autocast():
            result = evaluate(t.model, t.selection_set, t.data.class_counts, cfg.train.eval_batch_size)
        row.update({f"val_{key}": result[key] for key in VALIDATED})
        is_best = row["val_top1"] > state.best_top1
        if is_best:
            state.best_top1, state.best_epoch = row["val_top1"], state.epoch
            state.best_test_top1 = row["val_top1"] if t.val_set is None else _test_top1(t)
    state.history.append(row)
    fault_point("train.evaluated")
    payload = checkpoint_of(t, state)
    save_checkpoint(payload, run.last, keep_previous=True)
    fault_point("train.last_written")
    if is_best:
        save_checkpoint(payload, run.best)
    fault_point("train.best_written")
    write_metrics(run.metrics, state.history)
    fault_point("train.metrics_written")
    if writer is not None:
        for key, value in row.items():
            if key != "epoch" and value is not None:
                writer.add_scalar(key, value, state.epoch)
    t.world.barrier()
    return state.position()


def _test_top1(t: Trainer) -> float:
    """Test top-1 of the model as it is (the best epoch's, chosen on the validation split)."""
    with t.autocast():
        return evaluate(t.model, t.test_set, t.data.class_counts, t.cfg.train.eval_batch_size)["top1"]


def versions() -> dict[str, str]:
    """Software a run was made with (recorded in final.json)."""
    import torchvision

    from bbn import __version__

    return {"bbn": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def finish(t: Trainer, state: TrainState, run: RunDir, on_finish: FinishHook | None = None) -> dict[str, Any]:
    """final.json (last-epoch metrics plus the best epoch's top-1, and what `on_finish` adds:
    for `bbn train`, the classifier weight norms, each BBN branch alone and report.md);
    rank 0 alone ({} elsewhere)."""
    if not t.world.is_main:
        return {}
    with t.autocast():
        final = evaluate(t.model, t.test_set, t.data.class_counts, t.cfg.train.eval_batch_size)
    final.update(best_top1=state.best_test_top1, best_epoch=state.best_epoch, selection=t.selection,
                 class_counts=t.data.class_counts, class_names=t.data.train.class_names,
                 num_params=num_params(t.model), train_s=state.train_s, epochs=state.epoch, seed=t.cfg.seed,
                 versions=versions(), commit=source_commit(), device=device_label(t.device),
                 precision={"name": t.precision.name, "why": t.precision.why},
                 processes=t.world.size)
    if t.data.val is not None:
        final.update(best_val_top1=state.best_top1, val_counts=t.data.val.class_counts())
    if on_finish is not None:
        on_finish(t, state, run, final)
    write_results(run.final, final)  # last: final.json marks a finished run
    return final
