"""The training loop: epochs, SGD, the warm-up multi-step schedule, evaluation, checkpoints
and metrics in the run folder (bbn.tools.runner starts, continues and resumes runs). Nothing here
is method-specific: the method gives the loss."""

from __future__ import annotations

import math
import platform
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from bbn.engine import preemption
from bbn.engine.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, rng_states, save_checkpoint, set_rng_states
from bbn.config import Config
from bbn.data.loader import ImageSet, create_image_set
from bbn.data.prepare import prepare_data
from bbn.data.sources import Splits
from bbn.engine.distributed import (SINGLE, World, agree, all_reduce_mean, all_reduce_sum, barrier, check_batch,
                             data_parallel, init_world, rank_generator, shard_batches)
from bbn.errors import BBNError, Preempted
from bbn.engine.faults import fault_point
from bbn.devices import resolve_device
from bbn.engine.evaluate import evaluate
from bbn.methods import METHODS, Method
from bbn.models import create_model, num_params
from bbn.engine.nonfinite import NonFiniteLoss, first_nonfinite, grads_finite
from bbn.engine.optim import build_optimizer, learning_rate, set_lr
from bbn.engine.speed import autocast, autocast_dtype, compile_model, memory_format
from bbn.engine.results import write_results
from bbn.engine.runs import RunDir, write_metrics


@dataclass
class Session:
    """Everything a run needs, built and validated before any file is written."""

    cfg: Config
    device: torch.device
    data: Splits
    model: nn.Module
    method: Method
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    train_set: ImageSet
    test_set: ImageSet
    epoch: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0
    train_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    amp_dtype: torch.dtype | None = None
    partial: dict[str, Any] | None = None  # where the unfinished epoch stands (mid-epoch checkpoint)
    world: World = SINGLE  # this process among those torchrun started
    ddp: nn.Module | None = None  # the model's step under DistributedDataParallel (several processes)

    def autocast(self) -> ContextManager:
        """The precision context of forward passes (train.precision)."""
        return autocast(self.device, self.amp_dtype)


def check_names(cfg: Config) -> None:
    """Fail fast on an unknown source, model, method, adaptor or sampler name (no data read)."""
    from bbn.data.catalog import SOURCES
    from bbn.data.samplers import REBALANCE_SAMPLERS
    from bbn.methods.cumulative import ADAPTORS
    from bbn.models import MODELS

    SOURCES.get(cfg.data.source)
    MODELS.get(cfg.model.name)
    METHODS.get(cfg.method.name)
    ADAPTORS.get(cfg.method.adaptor)
    REBALANCE_SAMPLERS.get(cfg.method.rebalance_sampler)
    resolve_device(cfg.train.device)


def build_session(cfg: Config, pretrained: bool = True) -> Session:
    """Seed, load and check the data, build model, method and optimiser (no side effects).
    `pretrained=False` skips `model.pretrained` (a resumed run's weights come from last.pt)."""
    check_names(cfg)
    world, device_name = init_world(cfg.train.device)
    check_batch(cfg.train.batch_size, world)
    device = resolve_device(device_name)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg)
    model = create_model(cfg.model.name, data.train.num_classes, data.train.channels,
                         pretrained=cfg.model.pretrained if pretrained else None)
    method = METHODS.get(cfg.method.name)(cfg, data.train.labels, data.train.num_classes)
    method.check_model(model)
    fmt = memory_format(cfg.train.channels_last)
    model.to(device=device, memory_format=fmt)
    if cfg.train.compile:
        compile_model(model)
    ddp = data_parallel(model, world, cfg.train.sync_bn, device) if world.distributed else None
    return Session(
        cfg=cfg, device=device, data=data, model=model, method=method, world=world, ddp=ddp,
        optimizer=build_optimizer(model, cfg.train),
        generator=torch.Generator().manual_seed(cfg.seed),
        train_set=create_image_set(data.train, cfg, data.mean, data.std, device, fmt, "train"),
        test_set=create_image_set(data.test, cfg, data.mean, data.std, device, fmt, "test"),
        amp_dtype=autocast_dtype(cfg.train.precision, device),
    )


def _state(s: Session) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT, "config": s.cfg.to_dict(), "epoch": s.epoch,
        "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
        "generator": s.generator.get_state(), **rng_states(),
        "best_top1": s.best_top1, "best_epoch": s.best_epoch, "train_s": s.train_s,
        "history": s.history, "partial": s.partial,
    }


def restore(s: Session, payload: dict[str, Any]) -> None:
    s.model.load_state_dict(payload["model"])
    s.optimizer.load_state_dict(payload["optimizer"])
    s.generator.set_state(payload["generator"])
    set_rng_states(payload)
    s.epoch, s.best_top1, s.best_epoch = payload["epoch"], payload["best_top1"], payload["best_epoch"]
    s.train_s, s.history = payload["train_s"], list(payload["history"])
    s.partial = payload.get("partial")


def train_epoch(s: Session, progress: bool, max_steps: int | None = None) -> dict[str, Any]:
    """One epoch (or its first `max_steps` steps, for benchmarks); host synchronisation
    only every `log_every` steps and at the end (every step with train.on_nonfinite=skip).

    An epoch checkpointed part-way (`s.partial`) continues where it stopped: the epoch's
    draws are replayed from the generator state it started with (no model work), then the
    generator takes the state it had at the stop. A stop request (SIGTERM / SIGINT) ends the
    epoch after the current step with `s.partial` set and `Preempted` raised.
    """
    cfg, epoch, world = s.cfg, s.epoch + 1, s.world
    skip = cfg.train.on_nonfinite == "skip"
    lr = learning_rate(epoch, cfg.train)
    set_lr(s.optimizer, lr)
    resumed, s.partial = s.partial, None
    now = s.generator.get_state()
    epoch_start = now if resumed is None else resumed["generator_start"]
    s.generator.set_state(epoch_start)
    logged = s.method.start_epoch(epoch, s.generator)
    s.model.train()
    steps = s.method.steps_per_epoch() if max_steps is None else min(max_steps, s.method.steps_per_epoch())
    # Several processes: each trains its share of the batches all draw alike, with its own
    # per-step generator (bbn.engine.distributed); one process: one generator for everything.
    batches = s.train_set.plan_epoch(shard_batches(s.method.epoch_batches(s.generator), world), steps,
                                     rank_generator(cfg.seed, epoch, 0, world) if world.distributed else s.generator)
    loss_sum = torch.zeros((), device=s.device)
    acc_sum = torch.zeros((), device=s.device)
    done, images, skipped, elapsed = 0, 0, 0, 0.0
    if resumed is not None:
        done, images, skipped, elapsed = resumed["step"], resumed["images"], resumed["skipped"], resumed["elapsed_s"]
        images = images if world.is_main else 0  # the saved count is over all processes
        for _ in range(done):
            next(batches)
        s.generator.set_state(now)
        loss_sum, acc_sum = resumed["loss_sum"].to(s.device), resumed["acc_sum"].to(s.device)
    pending: list[tuple[int, Any, torch.Tensor]] = []  # steps since the last finiteness check
    bar = tqdm(total=steps, initial=done, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False,
               disable=not progress, dynamic_ncols=True, file=sys.stderr)
    start = time.perf_counter() - elapsed
    try:
        for i, batch in enumerate(batches, done + 1):
            if i > steps:
                break
            with s.autocast():
                if s.ddp is None:
                    out = s.method.step(s.model, s.train_set, batch, s.generator)
                else:
                    out = s.ddp(s.method, s.train_set, batch, rank_generator(cfg.seed, epoch, i, world))
            loss = out.loss.detach()
            # (several processes always go through backward: a step skipped on one rank alone
            # would stall the others; its averaged gradient is then non-finite on every rank)
            if skip and s.ddp is None and not bool(torch.isfinite(loss)):
                skipped += 1
            else:
                s.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                if skip and not grads_finite(s.model):
                    skipped += 1
                else:
                    s.optimizer.step()
                    loss_sum += loss
                    acc_sum += out.accuracy.detach()
                    images += out.images
                    pending.append((i, batch, loss))
            if i % cfg.train.log_every == 0 or i == steps:
                shown_loss, shown_acc = all_reduce_mean(torch.stack([loss_sum, acc_sum]), world).tolist()
                if not math.isfinite(shown_loss):
                    raise first_nonfinite(s.method.labels, epoch, steps, pending)
                pending.clear()
                used = max(i - skipped, 1)
                rate = world.size * images / max(time.perf_counter() - start, 1e-9)
                post = {"loss": f"{shown_loss / used:.3f}", "acc": f"{100 * shown_acc / used:.1f}",
                        "img/s": f"{rate:.0f}"}
                post.update({key: f"{value:.3f}" for key, value in logged.items() if value is not None})
                bar.set_postfix(post, refresh=False)
            bar.update(1)
            fault_point("train.step")
            if agree(preemption.requested() is not None, world) and i < steps:
                loss_sum, acc_sum = all_reduce_mean(torch.stack([loss_sum, acc_sum]), world).unbind()
                if not math.isfinite(loss_sum.item()):
                    raise first_nonfinite(s.method.labels, epoch, steps, pending)
                images = int(all_reduce_sum(torch.tensor(images), world))
                s.partial = {"epoch": epoch, "step": i, "steps": steps, "generator_start": epoch_start,
                             "loss_sum": loss_sum.cpu(), "acc_sum": acc_sum.cpu(), "images": images,
                             "skipped": skipped, "elapsed_s": time.perf_counter() - start}
                raise Preempted(f"at epoch {epoch}, step {i}/{steps}")
    finally:
        bar.close()
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    epoch_s = time.perf_counter() - start
    if skipped == steps:
        raise NonFiniteLoss(f"every step of epoch {epoch} had a non-finite loss or gradient")
    used = steps - skipped
    loss_sum, acc_sum = all_reduce_mean(torch.stack([loss_sum, acc_sum]), world).tolist()
    images = int(all_reduce_sum(torch.tensor(images), world))
    return {"epoch": epoch, "alpha": None, **logged, "lr": lr,
            "train_loss": loss_sum / used, "train_acc": 100.0 * acc_sum / used,
            "val_top1": None, "images_per_s": images / max(epoch_s, 1e-9), "epoch_s": epoch_s,
            "skipped_steps": skipped}


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


def position(s: Session) -> str:
    """Where the state of `s` stands, for messages."""
    if s.partial is not None:
        return f"at epoch {s.partial['epoch']}, step {s.partial['step']}/{s.partial['steps']}"
    return f"after epoch {s.epoch}"


# Called by `finish` with the session, its run folder and final.json's content before
# final.json is written: what the tools add (reports, analyses) without the engine knowing them.
FinishHook = Callable[["Session", RunDir, dict[str, Any]], None]


def fit(s: Session, run: RunDir, progress: bool = True, log=print,
        on_finish: FinishHook | None = None) -> dict[str, Any]:
    """Train from `s.epoch` to the configured number of epochs, writing the run folder.

    SIGTERM / SIGINT stop it after the current step with last.pt written and `Preempted`
    raised; a non-finite loss (train.on_nonfinite=stop) ends it with a BBNError naming the
    step and the last good checkpoint. With several processes, rank 0 alone evaluates and
    writes; the others train their shares and return {}. `on_finish` (rank 0) may add to
    final.json and write reports before final.json marks the run finished.
    """
    cfg, main = s.cfg, s.world.is_main
    if not main:
        progress, log = False, quiet_log
    for images in (s.train_set, s.test_set):  # unreadable image files are listed there
        images.set_skip_log(run.skipped_images if main else None)
    if s.history and main:  # metrics.jsonl and best.pt agree with last.pt, whatever moment a kill hit
        write_metrics(run.metrics, s.history)
        _complete_best(s, run)
    saved = position(s) if run.last.is_file() else None
    writer = _tensorboard(run, cfg.train.tensorboard and main)
    try:
        with preemption.stop_requests():
            try:
                while s.epoch < cfg.train.epochs:
                    if agree(preemption.requested() is not None, s.world):
                        raise Preempted(f"after epoch {s.epoch}")
                    row = train_epoch(s, progress)
                    saved = _end_epoch(s, run, row, writer)
                    log(_log_line(row, cfg.train.epochs))
            except Preempted as stop:
                if main:
                    save_checkpoint(_state(s), run.last, keep_previous=True)
                name = signal.Signals(preemption.requested() or signal.SIGTERM).name
                raise Preempted(f"stopped by {name} {stop}; wrote {run.last}; continue with "
                                f"'bbn train --resume {run.root}'") from None
            return finish(s, run, on_finish)
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


def _complete_best(s: Session, run: RunDir) -> None:
    """Write best.pt when last.pt is the best epoch and best.pt does not hold it yet: a kill
    between the two writes of `_end_epoch` (last.pt is the run's commit point)."""
    if s.partial is not None or s.epoch == 0 or s.best_epoch != s.epoch:
        return
    try:
        if run.best.is_file() and load_checkpoint(run.best, warn=quiet_log)["epoch"] == s.epoch:
            return
    except BBNError:
        pass  # unreadable: written again below
    save_checkpoint(_state(s), run.best)


def _end_epoch(s: Session, run: RunDir, row: dict[str, Any], writer: Any) -> str:
    """Evaluate when due, then write last.pt (the commit point: a resume starts from it),
    best.pt and metrics.jsonl, both derived from it and completed by a resume (rank 0; the
    other ranks wait); returns where last.pt stands."""
    cfg = s.cfg
    s.epoch = row["epoch"]
    s.train_s += row["epoch_s"]
    if not s.world.is_main:
        s.history.append(row)
        barrier(s.world)
        return position(s)
    is_best = False
    if s.epoch % cfg.train.eval_every == 0 or s.epoch == cfg.train.epochs:
        with s.autocast():
            row["val_top1"] = evaluate(s.model, s.test_set, s.data.class_counts, cfg.train.eval_batch_size)["top1"]
        is_best = row["val_top1"] > s.best_top1
        if is_best:
            s.best_top1, s.best_epoch = row["val_top1"], s.epoch
    s.history.append(row)
    fault_point("train.evaluated")
    state = _state(s)
    save_checkpoint(state, run.last, keep_previous=True)
    fault_point("train.last_written")
    if is_best:
        save_checkpoint(state, run.best)
    fault_point("train.best_written")
    write_metrics(run.metrics, s.history)
    fault_point("train.metrics_written")
    if writer is not None:
        for key, value in row.items():
            if key != "epoch" and value is not None:
                writer.add_scalar(key, value, s.epoch)
    barrier(s.world)
    return position(s)


def versions() -> dict[str, str]:
    """Software a run was made with (recorded in final.json)."""
    import torchvision

    from bbn import __version__

    return {"bbn": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def finish(s: Session, run: RunDir, on_finish: FinishHook | None = None) -> dict[str, Any]:
    """final.json (last-epoch metrics plus the best epoch's top-1, and what `on_finish` adds:
    for `bbn train`, the classifier weight norms, each BBN branch alone and report.md);
    rank 0 alone ({} elsewhere)."""
    if not s.world.is_main:
        return {}
    with s.autocast():
        final = evaluate(s.model, s.test_set, s.data.class_counts, s.cfg.train.eval_batch_size)
    final.update(best_top1=s.best_top1, best_epoch=s.best_epoch, class_counts=s.data.class_counts,
                 class_names=s.data.train.class_names, num_params=num_params(s.model),
                 train_s=s.train_s, epochs=s.epoch, seed=s.cfg.seed, versions=versions())
    if on_finish is not None:
        on_finish(s, run, final)
    write_results(run.final, final)  # last: final.json marks a finished run
    return final
