"""What a run trains with, built and validated before any file is written: the fixed
components (`Trainer`) and where training stands (`TrainState`, exactly what a checkpoint
holds besides the weights and the optimiser)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ContextManager

import numpy as np
import torch
import torch.nn as nn

from bbn.engine.budget import effective_config
from bbn.config import Config
from bbn.data.loader import ImageSet, create_image_set
from bbn.data.prepare import prepare_data
from bbn.data.sources import Splits
from bbn.devices import resolve_device
from bbn.engine.checkpoint import CHECKPOINT_FORMAT
from bbn.engine.distributed import World, check_batch, init_world
from bbn.engine.optim import build_optimizer
from bbn.engine.speed import (FP32, Precision, autocast, compile_model, grad_scaler, memory_format,
                              resolve_precision, resumed_precision)
from bbn.methods import METHODS, Method
from bbn.models import build_model


@dataclass(frozen=True)
class Trainer:
    """The fixed components of a run. `cfg` is what it trains with (bbn.engine.budget's effective
    config), `recipe` the config asked for (config.yaml's, what checkpoints keep). `step`
    runs a method's step on the model (under DistributedDataParallel when several processes
    train); `val_set` is the validation split best.pt is chosen on (None: the test set, the
    reference's protocol)."""

    cfg: Config
    device: torch.device
    world: World
    data: Splits
    model: nn.Module
    method: Method
    optimizer: torch.optim.Optimizer
    train_set: ImageSet
    test_set: ImageSet
    step: nn.Module
    precision: Precision = FP32
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    val_set: ImageSet | None = None
    recipe: Config | None = None  # None: cfg is the recipe

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype of forward passes (None: fp32)."""
        return self.precision.dtype

    def autocast(self) -> ContextManager:
        """The precision context of forward passes (train.precision)."""
        return autocast(self.device, self.amp_dtype)

    @property
    def selection(self) -> str:
        """The split best.pt is chosen on: 'val' or 'test'."""
        return "test" if self.val_set is None else "val"

    @property
    def selection_set(self) -> ImageSet:
        return self.test_set if self.val_set is None else self.val_set


@dataclass
class TrainState:
    """Where training stands: the last finished epoch, the best evaluated one (`best_top1`
    on the selection split, `best_test_top1` its test top-1), the time spent, one metrics
    row per epoch, and `partial`, the position inside an unfinished epoch (a mid-epoch
    checkpoint; bbn.engine.tally)."""

    epoch: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0
    best_test_top1: float | None = None
    train_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, Any] | None = None

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> "TrainState":
        best_top1 = payload["best_top1"]
        return cls(epoch=payload["epoch"], best_top1=best_top1, best_epoch=payload["best_epoch"],
                   best_test_top1=payload.get("best_test_top1", best_top1 if payload["best_epoch"] else None),
                   train_s=payload["train_s"], history=list(payload["history"]), partial=payload.get("partial"))

    def position(self) -> str:
        """Where training stands, for messages."""
        if self.partial is not None:
            return f"at epoch {self.partial['epoch']}, step {self.partial['step']}/{self.partial['steps']}"
        return f"after epoch {self.epoch}"


def checkpoint_of(t: Trainer, state: TrainState) -> dict[str, Any]:
    """The checkpoint's content: config, weights, optimiser, the precision the run computes in
    (and its gradient scaler's state) and the whole TrainState."""
    payload = {"format": CHECKPOINT_FORMAT, "config": (t.recipe or t.cfg).to_dict(), "model": t.model.state_dict(),
               "optimizer": t.optimizer.state_dict(), "precision": {"name": t.precision.name, "why": t.precision.why}, **asdict(state)}
    if t.scaler is not None:
        payload["scaler"] = t.scaler.state_dict()
    return payload


def restore(t: Trainer, payload: dict[str, Any]) -> TrainState:
    """Load a checkpoint's weights and optimiser into `t`; its TrainState."""
    t.model.load_state_dict(payload["model"])
    t.optimizer.load_state_dict(payload["optimizer"])
    if t.scaler is not None and "scaler" in payload:
        t.scaler.load_state_dict(payload["scaler"])
    return TrainState.from_checkpoint(payload)


def check_names(cfg: Config) -> None:
    """Fail fast on an unknown source, model, method (and what it names) or device (no data read)."""
    from bbn.data.catalog import SOURCES
    from bbn.models import MODELS

    SOURCES.get(cfg.data.source)
    MODELS.get(cfg.model.name)
    METHODS.get(cfg.method.name).check_config(cfg)
    resolve_device(cfg.train.device)


def build_trainer(cfg: Config, pretrained: bool = True, skip_log: Path | None = None,
                  resumed: dict[str, Any] | None = None, precision: str | None = None) -> Trainer:
    """Seed, load and check the data, build model, method and optimiser (no side effects).
    `pretrained=False` skips `model.pretrained` (a resumed run's weights come from last.pt);
    `skip_log` (rank 0) lists unreadable image files. The run trains with `effective_config(cfg)`
    (train.budget, train.lr_scale), in the precision `train.precision` resolves to on this
    device, or for a resumed run (`resumed`, its last.pt) the one it was trained in;
    `precision` overrides either (bbn.engine.speed.resumed_precision)."""
    check_names(cfg)
    recipe, cfg = cfg, effective_config(cfg)
    world, device_name = init_world(cfg.train.device)
    check_batch(cfg.train.batch_size, world)
    device = resolve_device(device_name)
    mode = (resolve_precision(precision or cfg.train.precision, device) if resumed is None
            else resumed_precision(resumed.get("precision"), cfg.train.precision, precision, device))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg)
    model = build_model(cfg, data.train.num_classes, data.train.channels, pretrained)
    method = METHODS.get(cfg.method.name)(cfg, data.train.labels, data.train.num_classes)
    method.check_model(model)
    fmt = memory_format(cfg.train.channels_last)
    model.to(device=device, memory_format=fmt)
    if cfg.train.compile:
        compile_model(model)
    skip_log = skip_log if world.is_main else None
    return Trainer(
        cfg=cfg, device=device, world=world, data=data, model=model, method=method,
        optimizer=build_optimizer(model, cfg.train),
        train_set=create_image_set(data.train, cfg, data.mean, data.std, device, fmt, "train", skip_log),
        test_set=create_image_set(data.test, cfg, data.mean, data.std, device, fmt, "test", skip_log),
        val_set=None if data.val is None else create_image_set(data.val, cfg, data.mean, data.std, device, fmt,
                                                               "val", skip_log),
        step=world.step_module(model, cfg.train.sync_bn, device),
        precision=mode, scaler=grad_scaler(mode, device), recipe=recipe,
    )
