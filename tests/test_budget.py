"""train.budget scales a recipe's whole schedule together (bbn.engine.budget), and the recipe guard
(train.lr_scale) says when the global batch is not the recipe's: by hand for the CIFAR BBN
recipe at budget 0.1, iNaturalist's 90- and 180-epoch recipes, the DRW/DRS switch, alpha's
curve, collapsing milestones, and tiny `bbn train` runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from bbn.engine.budget import (batch_line, budget_line, effective_config, effective_lr, effective_schedule,
                        recipe_batch_size, scaled_milestone)
from bbn.cli import main
from bbn.config import load_config
from bbn.engine.checkpoint import load_checkpoint
from bbn.engine.optim import learning_rate
from bbn.engine.runs import RunDir, read_metrics
from bbn.errors import BBNError
from bbn.methods import METHODS
from bbn.presets import preset_names
from bbn.tools.runner import resume_run, start_run

LABELS = torch.arange(10).repeat(30)  # 300 images of 10 classes: enough for a batch of 128


def alphas(cfg, epochs: range) -> list[float]:
    """alpha of each epoch as BBN logs it, with the run's (effective) config."""
    method = METHODS.get("bbn")(cfg, LABELS, 10)
    return [method.logged(e)["alpha"] for e in epochs]


def test_cifar_bbn_recipe_at_budget_0_1_by_hand() -> None:
    """200 epochs, warm-up 5, milestones 120/160 (x0.01), T_max 200 -> 20 epochs, warm-up 1,
    milestones 13/17 (12 of 20 epochs before the first drop, as 119 of 200), T_max 20."""
    cfg = load_config("cifar10_ir100_bbn", ["train.budget=0.1"])
    assert (cfg.train.epochs, cfg.train.budget) == (200, 0.1)  # the config keeps the recipe
    run = effective_config(cfg)
    assert (run.train.epochs, run.train.warmup_epochs, run.train.milestones) == (20, 1, [13, 17])
    assert run.method.t_max == 20.0 and run.train.lr == 0.1
    assert (run.train.budget, run.train.lr_scale) == (1.0, "none")  # its own recipe:
    assert effective_config(run) == run  # mapping it again changes nothing
    lrs = [learning_rate(e, run.train) for e in range(1, 21)]
    assert lrs == pytest.approx([0.1] * 12 + [1e-3] * 4 + [1e-5] * 4, rel=1e-12)
    # the fraction of the run before each drop is the recipe's, to the nearest epoch
    recipe = [learning_rate(e, cfg.train) for e in range(1, 201)]
    assert [sum(x > bound for x in recipe) for bound in (0.01, 1e-4)] == [119, 159]
    assert [sum(x > bound for x in lrs) for bound in (0.01, 1e-4)] == [12, 16]
    assert budget_line(cfg) == ("train.budget=0.1 scales the recipe's schedule: 20 of 200 epochs, warm-up 1 (of 5), "
                                "LR milestones [13, 17] (of [120, 160]), alpha's T_max 20 (of 200)")


def test_budget_1_is_the_recipe_unchanged() -> None:
    for name in preset_names():
        cfg = load_config(name, warn=lambda message: None)
        assert effective_config(cfg) == cfg, name
        assert budget_line(cfg) is None and batch_line(cfg) is None


@pytest.mark.parametrize("epochs, budget, want_epochs, want_t_max", [
    (180, 0.1, 18, 20.0),    # T_max 200 of the 180-epoch rule, scaled: 200 * 18 / 180
    (90, 0.1, 9, 10.0),      # T_max 100 of the 90-epoch rule: 100 * 9 / 90
    (180, 0.5, 90, 100.0),   # 100 from 200 scaled, not from the 90-epoch rule applied again
    (900, 0.1, 90, 90.0),    # 90 effective epochs: the rule is the recipe's (900), never the run's
    (200, 0.45, 90, 90.0),
])
def test_inaturalist_t_max_rule_comes_from_the_recipe(epochs: int, budget: float, want_epochs: int,
                                                      want_t_max: float) -> None:
    cfg = load_config("inat2018_bbn", [f"train.epochs={epochs}", f"train.budget={budget}"])
    s = effective_schedule(cfg)
    assert (s.epochs, s.t_max) == (want_epochs, pytest.approx(want_t_max, rel=1e-12))


def test_inaturalist_180_epoch_recipe_at_budget_0_1() -> None:
    cfg = load_config("inat2018_bbn", ["train.budget=0.1"])
    assert (cfg.train.epochs, cfg.train.milestones) == (180, [120, 160])
    run = effective_config(cfg)
    assert (run.train.epochs, run.train.warmup_epochs, run.train.milestones) == (18, 0, [13, 17])
    # alpha never reaches 0, as on the recipe: its last value is the recipe's at epoch 171
    got = alphas(run, range(1, 19))
    assert got[-1] == pytest.approx(1 - (17 / 20) ** 2, abs=1e-12) and got[-1] > 0.2
    assert got == pytest.approx(alphas(cfg, range(1, 181, 10)), abs=1e-12)


@pytest.mark.parametrize("adaptor", ["parabolic_decay", "linear_decay", "cosine_decay", "parabolic_increment", "step"])
def test_alpha_follows_the_recipes_curve_over_the_fraction_of_training(adaptor: str) -> None:
    """At budget 0.1, epoch e of the run has the alpha of the recipe's epoch 10 (e - 1) + 1."""
    cfg = load_config("cifar10_ir100_bbn", ["train.budget=0.1", f"method.adaptor={adaptor}"])
    run = effective_config(cfg)
    assert alphas(run, range(1, 21)) == pytest.approx(alphas(cfg, range(1, 201, 10)), abs=1e-12)


@pytest.mark.parametrize("preset", ["cifar10_ir100_ce_drw", "cifar10_ir100_ce_drs", "cifar10_ir100_ldam_drw"])
def test_the_drw_drs_switch_scales(preset: str) -> None:
    """Default: after 160 of 200 epochs (80 %) -> after 16 of 20; a given one scales too."""
    run = effective_config(load_config(preset, ["train.budget=0.1"]))
    assert run.method.defer_epoch == 16 and METHODS.get(run.method.name)(run, LABELS, 10).defer == 16
    assert effective_config(load_config(preset, ["train.budget=0.1", "method.defer_epoch=100"])).method.defer_epoch == 10
    # both phases stay: at 2 epochs the switch is after the first
    assert effective_config(load_config(preset, ["train.budget=0.01"])).method.defer_epoch == 1


def test_ce_drw_weights_and_ce_drs_sampler_switch_at_the_scaled_epoch() -> None:
    drw = METHODS.get("ce_drw")(effective_config(load_config("cifar10_ir100_ce_drw", ["train.budget=0.1"])), LABELS, 10)
    assert drw.class_weights(16) is None and drw.class_weights(17) is not None
    drs = METHODS.get("ce_drs")(effective_config(load_config("cifar10_ir100_ce_drs", ["train.budget=0.1"])), LABELS, 10)
    assert (drs.sampler(16), drs.sampler(17)) == ("uniform", "balanced")


def test_a_budget_too_short_for_two_phases_is_refused() -> None:
    with pytest.raises(BBNError, match=r"train.budget=0.004 leaves 1 epoch of train.epochs=200.*'ce_drw'"):
        effective_config(load_config("cifar10_ir100_ce_drw", ["train.budget=0.004"]))


def test_milestones_that_collapse_stack_and_never_land_on_epoch_1() -> None:
    """digits (60 epochs, milestones 40/52, gamma 0.01) at 0.05 -> 3 epochs, both drops at
    epoch 3 (the run ends at the recipe's final LR); at 0.01 -> 1 epoch, no drop fires and
    the epoch keeps the recipe's base LR (a drop at epoch 1 would lower the whole run)."""
    run = effective_config(load_config("digits_bbn", ["train.budget=0.05"]))
    assert (run.train.epochs, run.train.milestones) == (3, [3, 3])
    assert [learning_rate(e, run.train) for e in (1, 2, 3)] == pytest.approx([0.05, 0.05, 0.05 * 1e-4], rel=1e-12)
    one = effective_config(load_config("digits_bbn", ["train.budget=0.01"]))
    assert (one.train.epochs, one.train.milestones) == (1, [2, 2])
    assert learning_rate(1, one.train) == 0.05
    assert scaled_milestone(1, 0.1, 200, 20) == 1  # a recipe's drop at epoch 1 stays there
    assert scaled_milestone(250, 0.1, 200, 20) == 26  # one after the recipe's end stays after the run's


def test_warmup_scales_half_up() -> None:
    assert effective_config(load_config("cifar10_ir100_bbn", ["train.budget=0.5"])).train.warmup_epochs == 3
    assert effective_config(load_config("cifar10_ir100_bbn", ["train.budget=0.05"])).train.warmup_epochs == 0


# --- the recipe guard ---------------------------------------------------------------

def test_an_overridden_batch_records_the_recipes() -> None:
    cfg = load_config("digits_bbn", ["train.batch_size=64"])
    assert (cfg.train.batch_size, cfg.train.recipe_batch_size, recipe_batch_size(cfg)) == (64, 32, 32)
    assert load_config("digits_bbn").train.recipe_batch_size is None  # not overridden: its own recipe
    assert load_config("digits_bbn", ["train.batch_size=32"]).train.recipe_batch_size is None
    given = load_config("digits_bbn", ["train.batch_size=64", "train.recipe_batch_size=16"])
    assert given.train.recipe_batch_size == 16


def test_a_users_own_file_is_its_own_recipe(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  batch_size: 64\n")
    assert batch_line(load_config(path)) is None
    assert load_config(path, ["train.batch_size=16"]).train.recipe_batch_size == 64


def test_lr_scale_none_keeps_the_lr_and_says_so() -> None:
    cfg = load_config("digits_bbn", ["train.batch_size=64"])
    assert effective_lr(cfg) == 0.05 and effective_config(cfg).train.lr == 0.05
    assert batch_line(cfg) == ("global batch 64 differs from the recipe's 32 (train.recipe_batch_size; the batch is "
                               "global, split across torchrun processes): lr stays 0.05 (train.lr_scale=none); "
                               "train.lr_scale=linear would use 0.1")


def test_lr_scale_linear_multiplies_by_batch_over_recipe_batch() -> None:
    cfg = load_config("digits_bbn", ["train.batch_size=64", "train.lr_scale=linear"])
    run = effective_config(cfg)
    assert run.train.lr == pytest.approx(0.1) and run.train.lr_scale == "none"
    assert effective_config(run) == run
    assert batch_line(cfg).endswith("train.lr_scale=linear scales lr 0.05 by 64/32 to 0.1")
    smaller = effective_config(load_config("digits_bbn", ["train.batch_size=8", "train.lr_scale=linear"]))
    assert smaller.train.lr == pytest.approx(0.0125)
    # the same batch: nothing to scale, nothing to say
    same = load_config("digits_bbn", ["train.lr_scale=linear"])
    assert effective_config(same).train.lr == 0.05 and batch_line(same) is None


# --- end to end -----------------------------------------------------------------------

TINY = ["data.n_max=40", "train.threads=1", "train.tensorboard=false", "--no-progress"]


class Stop(Exception):
    """Raised from the log callback to interrupt a run after an epoch was written."""


def test_bbn_train_digits_at_budget_0_05(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "digits_bbn", "train.budget=0.05", *TINY, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert ("train.budget=0.05 scales the recipe's schedule: 3 of 60 epochs, warm-up 0 (of 5), "
            "LR milestones [3, 3] (of [40, 52]), alpha's T_max 3 (of 60)") in stdout
    run = RunDir(out)
    rows = read_metrics(run.metrics)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.05, 5e-6], rel=1e-12)
    assert [r["alpha"] for r in rows] == pytest.approx([1.0, 1 - (1 / 3) ** 2, 1 - (2 / 3) ** 2], abs=1e-12)
    text = run.config.read_text()
    saved = yaml.safe_load(text)  # the recipe and the budget; the schedule run, as a comment
    assert (saved["train"]["epochs"], saved["train"]["milestones"], saved["train"]["budget"]) == (60, [40, 52], 0.05)
    assert ("# effective schedule (derived from the keys above): epochs 3, warmup_epochs 0, milestones [3, 3], "
            "lr 0.05, t_max 3\n") in text
    assert load_checkpoint(run.last)["config"]["train"]["budget"] == 0.05
    final = json.loads(run.final.read_text())
    assert final["epochs"] == 3 and final["recipe_notes"][0].startswith("train.budget=0.05 scales")
    assert f"- Recipe: {final['recipe_notes'][0]}" in (out / "report.md").read_text()


def test_a_budget_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    cfg = load_config("digits_bbn", ["train.budget=0.05", *TINY[:-1]])
    _, whole = start_run(cfg, tmp_path / "whole", progress=False, log=lambda line: None)

    def stop_after_2(line: str) -> None:
        if line.startswith("epoch 2/3"):
            raise Stop
    with pytest.raises(Stop):
        start_run(cfg, tmp_path / "cut", progress=False, log=stop_after_2)
    lines: list[str] = []
    _, resumed = resume_run(tmp_path / "cut", progress=False, log=lines.append)
    assert any(line.startswith("train.budget=0.05 scales") for line in lines)
    a, b = load_checkpoint(tmp_path / "whole/checkpoints/last.pt"), load_checkpoint(tmp_path / "cut/checkpoints/last.pt")
    assert all(torch.equal(t, b["model"][k]) for k, t in a["model"].items())
    assert resumed["top1"] == whole["top1"] and resumed["epochs"] == 3


def test_bbn_train_says_when_the_batch_is_not_the_recipes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["train", "digits_bbn", "train.budget=0.02", "train.batch_size=64", "train.lr_scale=linear", *TINY]
    assert main([*args, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("global batch 64 differs from the recipe's 32") == 1
    assert "train.lr_scale=linear scales lr 0.05 by 64/32 to 0.1" in stdout
    assert [r["lr"] for r in read_metrics(RunDir(out).metrics)] == pytest.approx([0.1])
    notes = json.loads(RunDir(out).final.read_text())["recipe_notes"]
    assert len(notes) == 2 and notes[1].startswith("global batch 64 differs")
    saved = yaml.safe_load(RunDir(out).config.read_text())["train"]
    assert (saved["batch_size"], saved["recipe_batch_size"], saved["lr"], saved["lr_scale"]) == (64, 32, 0.05, "linear")


def test_bbn_config_shows_the_effective_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "cifar10_ir100_ce_drw", "train.budget=0.1"]) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text)["train"]["budget"] == 0.1
    assert text.endswith("# effective schedule (derived from the keys above): epochs 20, warmup_epochs 1, "
                         "milestones [13, 17], lr 0.1, defer_epoch 16\n")
    assert main(["config", "cifar10_ir100_ce_drw"]) == 0
    assert "#" not in capsys.readouterr().out  # the recipe itself: nothing to add
