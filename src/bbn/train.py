"""The training loop: epochs, SGD, the warm-up multi-step schedule, evaluation, the run
folder and resume. Nothing here is method-specific: the method gives the loss."""

from __future__ import annotations

import json
import platform
import shutil
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from bbn.analysis import classifier_weight_norms
from bbn.checkpoint import load_checkpoint, save_checkpoint
from bbn.config import Config, build_config, read_yaml
from bbn.data.loader import DeviceImages
from bbn.data.prepare import prepare_data
from bbn.data.sources import Splits
from bbn.errors import BBNError
from bbn.evaluate import evaluate, evaluate_branches, resolve_device
from bbn.methods import METHODS, Method
from bbn.models import create_model, num_params
from bbn.optim import build_optimizer, learning_rate, set_lr
from bbn.report import write_report
from bbn.speed import autocast, autocast_dtype, compile_model, memory_format
from bbn.runs import (RunDir, check_same_config, create_run_dir, default_run_path, never_trained, write_json,
                      write_metrics)

CHECKPOINT_FORMAT = 1


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
    train_set: DeviceImages
    test_set: DeviceImages
    epoch: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0
    train_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    amp_dtype: torch.dtype | None = None

    def autocast(self) -> ContextManager:
        """The precision context of forward passes (train.precision)."""
        return autocast(self.device, self.amp_dtype)


def check_names(cfg: Config) -> None:
    """Fail fast on an unknown source, model, method, adaptor or sampler name (no data read)."""
    from bbn.data import cifar  # noqa: F401  (registers the CIFAR sources)
    from bbn.data.samplers import REBALANCE_SAMPLERS
    from bbn.data.sources import SOURCES
    from bbn.methods.cumulative import ADAPTORS
    from bbn.models import MODELS

    SOURCES.get(cfg.data.source)
    MODELS.get(cfg.model.name)
    METHODS.get(cfg.method.name)
    ADAPTORS.get(cfg.method.adaptor)
    REBALANCE_SAMPLERS.get(cfg.method.rebalance_sampler)
    resolve_device(cfg.train.device)


def build_session(cfg: Config) -> Session:
    """Seed, load and check the data, build model, method and optimiser (no side effects)."""
    check_names(cfg)
    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg)
    model = create_model(cfg.model.name, data.train.num_classes, data.train.images.shape[1])
    method = METHODS.get(cfg.method.name)(cfg, data.train.labels, data.train.num_classes)
    method.check_model(model)
    fmt = memory_format(cfg.train.channels_last)
    model.to(device=device, memory_format=fmt)
    if cfg.train.compile:
        compile_model(model)
    return Session(
        cfg=cfg, device=device, data=data, model=model, method=method,
        optimizer=build_optimizer(model, cfg.train),
        generator=torch.Generator().manual_seed(cfg.seed),
        train_set=DeviceImages.create(data.train, data.mean, data.std, device, fmt),
        test_set=DeviceImages.create(data.test, data.mean, data.std, device, fmt),
        amp_dtype=autocast_dtype(cfg.train.precision, device),
    )


def _state(s: Session) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT, "config": s.cfg.to_dict(), "epoch": s.epoch,
        "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
        "generator": s.generator.get_state(), "torch_rng": torch.get_rng_state(),
        "best_top1": s.best_top1, "best_epoch": s.best_epoch, "train_s": s.train_s,
        "history": s.history,
    }


def _restore(s: Session, payload: dict[str, Any]) -> None:
    s.model.load_state_dict(payload["model"])
    s.optimizer.load_state_dict(payload["optimizer"])
    s.generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    s.epoch, s.best_top1, s.best_epoch = payload["epoch"], payload["best_top1"], payload["best_epoch"]
    s.train_s, s.history = payload["train_s"], list(payload["history"])


def train_epoch(s: Session, progress: bool, max_steps: int | None = None) -> dict[str, Any]:
    """One epoch (or its first `max_steps` steps, for benchmarks); host synchronisation
    only every `log_every` steps and at the end."""
    cfg, epoch = s.cfg, s.epoch + 1
    lr = learning_rate(epoch, cfg.train)
    set_lr(s.optimizer, lr)
    logged = s.method.start_epoch(epoch, s.generator)
    s.model.train()
    steps = s.method.steps_per_epoch() if max_steps is None else min(max_steps, s.method.steps_per_epoch())
    loss_sum = torch.zeros((), device=s.device)
    acc_sum = torch.zeros((), device=s.device)
    images = 0
    bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False,
               disable=not progress, dynamic_ncols=True, file=sys.stderr)
    start = time.perf_counter()
    for i, batch in enumerate(s.method.epoch_batches(s.generator), 1):
        if i > steps:
            break
        with s.autocast():
            out = s.method.step(s.model, s.train_set, batch, s.generator)
        s.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        s.optimizer.step()
        loss_sum += out.loss.detach()
        acc_sum += out.accuracy.detach()
        images += out.images
        if i % cfg.train.log_every == 0 or i == steps:
            rate = images / max(time.perf_counter() - start, 1e-9)
            post = {"loss": f"{loss_sum.item() / i:.3f}", "acc": f"{100 * acc_sum.item() / i:.1f}",
                    "img/s": f"{rate:.0f}"}
            if logged.get("alpha") is not None:
                post["alpha"] = f"{logged['alpha']:.3f}"
            bar.set_postfix(post, refresh=False)
        bar.update(1)
    bar.close()
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    epoch_s = time.perf_counter() - start
    return {"epoch": epoch, "alpha": logged.get("alpha"), "lr": lr,
            "train_loss": loss_sum.item() / steps, "train_acc": 100.0 * acc_sum.item() / steps,
            "val_top1": None, "images_per_s": images / max(epoch_s, 1e-9), "epoch_s": epoch_s}


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


def fit(s: Session, run: RunDir, progress: bool = True, log=print) -> dict[str, Any]:
    """Train from `s.epoch` to the configured number of epochs, writing the run folder."""
    cfg = s.cfg
    writer = _tensorboard(run, cfg.train.tensorboard)
    while s.epoch < cfg.train.epochs:
        row = train_epoch(s, progress)
        s.epoch = row["epoch"]
        s.train_s += row["epoch_s"]
        is_best = False
        if s.epoch % cfg.train.eval_every == 0 or s.epoch == cfg.train.epochs:
            with s.autocast():
                row["val_top1"] = evaluate(s.model, s.test_set, s.data.class_counts, cfg.train.eval_batch_size)["top1"]
            is_best = row["val_top1"] > s.best_top1
            if is_best:
                s.best_top1, s.best_epoch = row["val_top1"], s.epoch
        s.history.append(row)
        state = _state(s)
        if is_best:
            save_checkpoint(state, run.best)
        save_checkpoint(state, run.last)
        write_metrics(run.metrics, s.history)
        if writer is not None:
            for key, value in row.items():
                if key != "epoch" and value is not None:
                    writer.add_scalar(key, value, s.epoch)
        log(_log_line(row, cfg.train.epochs))
    if writer is not None:
        writer.close()
    return finish(s, run)


def versions() -> dict[str, str]:
    """Software a run was made with (recorded in final.json)."""
    import torchvision

    from bbn import __version__

    return {"bbn": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def finish(s: Session, run: RunDir) -> dict[str, Any]:
    """final.json (last-epoch metrics plus the best epoch's top-1, the classifier weight
    norms and, for BBN, each branch alone) and report.md."""
    with s.autocast():
        final = evaluate(s.model, s.test_set, s.data.class_counts, s.cfg.train.eval_batch_size)
    final.update(best_top1=s.best_top1, best_epoch=s.best_epoch, class_counts=s.data.class_counts,
                 class_names=s.data.train.class_names, num_params=num_params(s.model),
                 train_s=s.train_s, epochs=s.epoch, seed=s.cfg.seed, versions=versions(),
                 weight_norms=classifier_weight_norms(s.model))
    with s.autocast():
        branches = evaluate_branches(s.model, s.test_set, s.data.class_counts, s.cfg.train.eval_batch_size)
    if branches is not None:
        final["branches"] = branches
    write_json(run.final, final)
    write_report(run.root, final, s.history, s.cfg.to_dict())
    return final


def start_run(cfg: Config, out: str | Path | None, progress: bool = True, log=print) -> tuple[RunDir, dict[str, Any]]:
    """A new run: everything is validated before the run folder is created."""
    session = build_session(cfg)
    run = create_run_dir(out if out is not None else default_run_path(cfg), cfg)
    log(f"run folder: {run.root}  ({len(session.data.train)} training images, "
        f"{session.data.train.num_classes} classes, {num_params(session.model):,} parameters, "
        f"device {session.device})")
    return run, fit(session, run, progress, log)


def continue_run(cfg: Config, out: str | Path, progress: bool = True,
                 log=print) -> tuple[RunDir, dict[str, Any]]:
    """The run of `cfg` in folder `out`, whatever state it is in: a finished one is reused, a
    stopped one resumed, one that never finished an epoch (or none) started afresh. A folder
    made with a config that learns something else is an error."""
    run = RunDir(out)
    if run.root.is_dir() and run.config.is_file() and not never_trained(run):
        check_same_config(run, cfg)
        if run.final.is_file():
            log(f"reusing the finished run {run.root}")
            return run, json.loads(run.final.read_text())
        return resume_run(run.root, progress=progress, log=log)
    if run.root.is_dir() and run.config.is_file():
        shutil.rmtree(run.root)
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
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise BBNError(f"checkpoint '{run.last}' has format {payload.get('format')}, expected {CHECKPOINT_FORMAT}")
    session = build_session(cfg)
    _restore(session, payload)
    log(f"resuming {run.root} after epoch {session.epoch}/{cfg.train.epochs}")
    return run, fit(session, run, progress, log)
