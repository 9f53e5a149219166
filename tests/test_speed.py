"""Speed switches: precision, memory format and compilation keep the computation the same."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bbn.config import load_config
from bbn.data.loader import DeviceImages
from bbn.errors import BBNError
import bbn.engine.speed as speed
from bbn.engine.speed import autocast, compile_model, memory_format, resolve_precision, resumed_precision
from bbn.engine.session import Trainer, TrainState, build_trainer, checkpoint_of, restore
from bbn.engine.train import train_epoch
from bbn.methods import StepContext
from test_methods import MEAN, STD, first_step, gather, make, tiny_images

CPU = torch.device("cpu")


CUDA = torch.device("cuda")  # only its type is read: the CUDA rules are checked on any host


def test_explicit_precisions() -> None:
    assert resolve_precision("fp32", CPU).dtype is None
    assert resolve_precision("bf16", CPU).dtype is torch.bfloat16
    assert resolve_precision("fp16", CUDA).dtype is torch.float16 and resolve_precision("fp16", CUDA).scaled
    with pytest.raises(BBNError, match="fp16, which needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(BBNError, match="not one of fp32, bf16, fp16, auto"):
        resolve_precision("fp8", CPU)


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_exactly_where_the_cpu_runs_it_natively(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    auto = resolve_precision("auto", CPU)
    assert auto.name == ("bf16" if native else "fp32") and auto.why.startswith("auto: ")
    assert not auto.scaled
    assert ("emulates" in resolve_precision("bf16", CPU).why) is not native  # allowed, and said to be slow


@pytest.mark.parametrize("has_bf16,name", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda(monkeypatch: pytest.MonkeyPatch, has_bf16: bool, name: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: has_bf16)
    auto = resolve_precision("auto", CUDA)
    assert auto.name == name and auto.scaled is (name == "fp16")
    if not has_bf16:
        with pytest.raises(BBNError, match="bf16, which this CUDA device does not run"):
            resolve_precision("bf16", CUDA)


def test_a_resumed_run_keeps_its_precision_or_says_how_to_change_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    kept = resumed_precision({"name": "bf16", "why": "auto: native"}, "auto", None, CPU)  # auto gives fp32 here
    assert kept.name == "bf16" and kept.why.startswith("auto: native") and "emulates" in kept.why
    assert resumed_precision("bf16", "auto", None, CPU).name == "bf16"
    assert resumed_precision(None, "fp32", None, CPU).name == "fp32"  # a checkpoint that does not record it
    with pytest.raises(BBNError, match="--precision fp32"):
        resumed_precision("fp16", "auto", None, CPU)
    changed = resumed_precision("fp16", "auto", "fp32", CPU)
    assert changed.name == "fp32" and "not bit-exact" in changed.why
    assert "not bit-exact" not in resumed_precision("bf16", "auto", "bf16", CPU).why
    with pytest.raises(BBNError, match="put back the run's own last.pt"):
        resumed_precision("fp12", "auto", None, CPU)


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
    t = build_trainer(load_config(None, ["train.channels_last=false", "train.threads=1", "train.precision=fp32"]))
    assert t.amp_dtype is None and t.train_set.memory_format is torch.contiguous_format
    assert t.scaler is None and t.precision.why == "set by train.precision"


def test_a_gradient_scaler_trains_and_is_checkpointed() -> None:
    """The fp16 path's scaler (CUDA's), run here with a CPU scaler: scaled backward, the
    scaler's step and update, its state in the checkpoint and back."""
    t = build_trainer(load_config(None, ["train.threads=1", "train.precision=fp32", "train.batch_size=16"]))
    t = dataclasses.replace(t, precision=speed.Precision("fp16", "test"), scaler=torch.amp.GradScaler("cpu", init_scale=16.0))  # small: no fp16 overflow to skip
    before = [p.detach().clone() for p in t.model.parameters()]
    row = train_epoch(t, TrainState(), progress=False, max_steps=2)
    assert math.isfinite(row["train_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters()))  # the scaler stepped
    assert t.scaler.get_scale() == 16.0  # no overflow, no back-off
    payload = checkpoint_of(t, TrainState(epoch=1))
    assert payload["precision"] == {"name": "fp16", "why": "test"} and payload["scaler"]["scale"] == t.scaler.get_scale()
    fresh = dataclasses.replace(t, scaler=torch.amp.GradScaler("cpu", init_scale=1.0))
    restore(fresh, payload)
    assert fresh.scaler.get_scale() == t.scaler.get_scale()


def test_compile_keeps_names_and_refuses_other_models() -> None:
    _, model, _ = make("bbn", "bbn_resnet32")
    keys = list(model.state_dict())
    compile_model(model)
    assert list(model.state_dict()) == keys  # checkpoints stay loadable either way
    with pytest.raises(BBNError, match="train.compile=false"):
        compile_model(torch.nn.Linear(2, 2))


def test_every_place_names_the_same_precisions() -> None:
    """The config's values, the command line's choices and the resolver's names agree."""
    from typing import get_args

    from bbn.cli import PRECISION_CHOICES
    from bbn.config import TrainConfig

    assert set(get_args(TrainConfig.model_fields["precision"].annotation)) == set(PRECISION_CHOICES) \
        == {"auto", *speed.PRECISIONS}
