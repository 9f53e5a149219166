"""Speed switches: precision, memory format and compilation keep the computation the same."""

from __future__ import annotations

import pytest
import torch

from bbn.config import load_config
from bbn.data.loader import DeviceImages
from bbn.errors import BBNError
from bbn.engine.speed import autocast, autocast_dtype, bf16_fast, compile_model, memory_format
from bbn.engine.session import Trainer, build_trainer
from bbn.methods import StepContext
from test_methods import MEAN, STD, first_step, gather, make, tiny_images

CPU = torch.device("cpu")


def test_precision_names() -> None:
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    assert autocast_dtype("auto", CPU) is (torch.bfloat16 if bf16_fast(CPU) else None)
    with pytest.raises(BBNError, match="fp32, bf16, auto"):
        autocast_dtype("fp16", CPU)


def test_channels_last_batches_hold_the_same_values() -> None:
    data = tiny_images()
    plain = DeviceImages.create(data, MEAN, STD, CPU, padding=1, flip=True)
    nhwc = DeviceImages.create(data, MEAN, STD, CPU, memory_format(True), padding=1, flip=True)
    idx = torch.tensor([3, 0, 7, 7, 12])
    a, ya = plain.gather(idx, torch.Generator().manual_seed(5))
    b, yb = nhwc.gather(idx, torch.Generator().manual_seed(5))
    assert b.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    for (x1, _), (x2, _) in zip(plain.eval_batches(8), nhwc.eval_batches(8)):
        assert torch.equal(x1, x2) and x2.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_model_gives_the_same_loss() -> None:
    losses = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        method, model, data = make("bbn", "bbn_resnet32")
        model.to(memory_format=fmt)
        data.memory_format = fmt
        batch = gather(data, first_step(method, 1, torch.Generator().manual_seed(1)))
        assert batch.x_c.is_contiguous(memory_format=fmt) and batch.x_r.is_contiguous(memory_format=fmt)
        losses.append(method.step(model, batch, StepContext(1, 1, torch.Generator().manual_seed(2))).loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_bf16_autocast_step_is_close_to_fp32() -> None:
    losses = []
    for dtype in (None, torch.bfloat16):
        method, model, data = make("bbn", "bbn_resnet32")
        batch = gather(data, first_step(method, 1, torch.Generator().manual_seed(1)))
        with autocast(CPU, dtype):
            out = method.step(model, batch, StepContext(1, 1, torch.Generator().manual_seed(2)))
        losses.append(out.loss.item())
        assert out.loss.dtype == torch.float32  # the loss is reduced in fp32 under autocast
    assert losses[1] == pytest.approx(losses[0], rel=0.05)


def test_trainer_applies_the_switches() -> None:
    t = build_trainer(load_config(None, ["train.channels_last=true", "train.precision=bf16", "train.threads=1"]))
    assert isinstance(t, Trainer)
    assert t.amp_dtype is torch.bfloat16
    assert t.model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert t.train_set.memory_format is torch.channels_last
    t = build_trainer(load_config(None, ["train.channels_last=false", "train.threads=1"]))
    assert t.amp_dtype is None and t.train_set.memory_format is torch.contiguous_format


def test_compile_keeps_names_and_refuses_other_models() -> None:
    _, model, _ = make("bbn", "bbn_resnet32")
    keys = list(model.state_dict())
    compile_model(model)
    assert list(model.state_dict()) == keys  # checkpoints stay loadable either way
    with pytest.raises(BBNError, match="train.compile=false"):
        compile_model(torch.nn.Linear(2, 2))
