"""Non-finite losses and gradients: `train.on_nonfinite=stop` ends the run with one line naming
the step, its classes and the last good checkpoint; `skip` skips and counts such steps; no
checkpoint ever holds NaN or inf."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_checks import assert_bad_input

from bbn.engine.checkpoint import load_checkpoint, nonfinite_entries
from bbn.cli import main
from bbn.config import load_config
from bbn.data.prepare import prepare_data
from bbn.engine.keys import Draw, keyed_generator
from bbn.methods.base import METHODS, StepResult
from bbn.methods.bbn import BBN
from bbn.engine.runs import RunDir, read_metrics

# digits-LT with a head class of 60 images: 201 training images, 6 steps an epoch
TINY = ["digits_bbn", "train.epochs=3", "train.warmup_epochs=1", "train.milestones=[3]", "train.tensorboard=false",
        "train.threads=1", "train.device=cpu", "data.n_max=60", "data.test_max_per_class=10", "train.log_every=4"]
STEPS = 6


def poison_steps(monkeypatch: pytest.MonkeyPatch, calls: set[int], kind: str = "loss") -> list[torch.Tensor]:
    """Make the given training steps (1-based over the run) non-finite: `loss` gives a NaN
    loss, `grad` a finite loss whose gradient is NaN. Returns the poisoned steps' batches."""
    real_step, seen, batches = BBN.step, [0], []

    def step(self, model, batch, ctx):
        out = real_step(self, model, batch, ctx)
        seen[0] += 1
        if seen[0] not in calls:
            return out
        batches.append(batch)
        if kind == "loss":
            return StepResult(out.loss * float("nan"), out.accuracy, out.images)
        w = next(model.parameters())
        zero_with_nan_grad = torch.sqrt((w - w.detach()).abs()).sum() * 0.0  # value 0, gradient 0 * inf
        return StepResult(out.loss + zero_with_nan_grad, out.accuracy, out.images)

    monkeypatch.setattr(BBN, "step", step)
    return batches


def _finite_checkpoints(run: RunDir) -> None:
    for path in run.checkpoints.glob("*.pt"):
        assert nonfinite_entries(load_checkpoint(path)) == [], path


def test_stop_names_the_step_its_classes_and_the_last_good_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    batches = poison_steps(monkeypatch, {STEPS + 3})  # epoch 2, step 3
    run = RunDir(out)
    line = assert_bad_input(["train", *TINY, "--no-progress", "--out", str(out)], capsys,
                            f"non-finite loss (nan) at epoch 2, step 3/{STEPS}",
                            f"last good checkpoint: '{run.last}' (after epoch 1)", "train.on_nonfinite=skip")
    cfg = load_config(TINY[0], TINY[1:])
    labels = prepare_data(cfg).train.labels
    idx_c, idx_r = METHODS.get("bbn")(cfg, labels, 10).plan(2, keyed_generator(cfg.seed, Draw.PLAN, 2))[2]
    classes = torch.unique(labels[torch.cat([idx_c, idx_r])]).tolist()  # the planned step 3 of epoch 2
    assert classes == torch.unique(torch.cat(batches[0].labels())).tolist()
    assert f"(batch classes {', '.join(map(str, classes[:8]))}" in line
    assert load_checkpoint(run.last)["epoch"] == 1 and len(read_metrics(run.metrics)) == 1
    assert not run.final.exists()
    _finite_checkpoints(run)


def test_non_finite_weights_are_never_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    poison_steps(monkeypatch, {2 * STEPS}, kind="grad")  # the last step of epoch 2: the update makes NaN weights
    assert_bad_input(["train", *TINY, "--no-progress", "--out", str(out)], capsys,
                     "refusing to write checkpoint", "holds NaN or inf")
    run = RunDir(out)
    assert load_checkpoint(run.last)["epoch"] == 1
    _finite_checkpoints(run)


def test_skip_counts_skipped_steps_and_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    poison_steps(monkeypatch, {STEPS + 3, STEPS + 5}, kind="loss")  # two steps of epoch 2
    poison_steps(monkeypatch, {2 * STEPS + 1}, kind="grad")  # first step of epoch 3: NaN gradient only
    assert main(["train", *TINY, "train.on_nonfinite=skip", "--no-progress", "--out", str(out)]) == 0
    run = RunDir(out)
    rows = read_metrics(run.metrics)
    assert [r["skipped_steps"] for r in rows] == [0, 2, 1]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    assert run.final.is_file()
    _finite_checkpoints(run)


def test_the_option_is_validated(capsys: pytest.CaptureFixture[str]) -> None:
    assert_bad_input(["train", "train.on_nonfinite=ignore"], capsys, "train.on_nonfinite", "stop", "skip")
