"""The trainer: run folder contents, best/last checkpoints, and resume == uninterrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from kill_harness import without_timing

import bbn.engine.speed as speed
from bbn.engine.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from bbn.config import load_config, save_config
from bbn.engine.optim import learning_rate
from bbn.engine.runs import RunDir, read_metrics
from bbn.tools.evaluate import eval_command
from bbn.errors import BBNError
from bbn.tools.runner import continue_run, resume_run, start_run

# A tiny digits-LT run: ~500 training images of 8x8, 4 epochs of ~15 steps.
TINY = ["train.epochs=4", "train.warmup_epochs=1", "train.milestones=[3]", "train.tensorboard=false",
        "train.threads=1"]
# digits are grey: the 3x3 stem convolution (16 filters) has 2 input channels fewer than on CIFAR
GREY_STEM = 2 * 16 * 3 * 3


class Stop(Exception):
    """Raised from the log callback to interrupt a run after an epoch was written."""


def _quiet(_line: str) -> None:
    pass


def _stop_after(epoch: int):
    def log(line: str) -> None:
        if line.startswith(f"epoch {epoch}/"):
            raise Stop
    return log


def _rows(run: RunDir) -> list[dict]:
    return [without_timing(row) for row in read_metrics(run.metrics)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, dict]:
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    return start_run(load_config(None, TINY), out, progress=False, log=_quiet)


def test_run_folder_contract(finished: tuple[RunDir, dict]) -> None:
    run, final = finished
    for path in (run.config, run.metrics, run.final, run.last, run.best, run.root / "report.md",
                 run.root / "per_class.png"):
        assert path.is_file(), path
    assert not list(run.root.rglob("*.tmp")), "temporary files left behind"
    saved = yaml.safe_load(run.config.read_text())
    assert saved["train"]["epochs"] == 4 and saved["method"]["name"] == "bbn"
    rows = read_metrics(run.metrics)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    # parabolic decay over 4 epochs: alpha = 1 - ((e-1)/4)^2
    assert [r["alpha"] for r in rows] == pytest.approx([1.0, 1 - 1 / 16, 1 - 4 / 16, 1 - 9 / 16])
    # warm-up of 1 epoch is over at epoch 1; milestone 3 multiplies by gamma
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.05, 0.0005, 0.0005])
    assert all(r["val_top1"] is not None for r in rows)
    on_disk = json.loads(run.final.read_text())
    assert on_disk["top1"] == pytest.approx(final["top1"])
    assert on_disk["top1"] == pytest.approx(rows[-1]["val_top1"])
    assert on_disk["best_top1"] == pytest.approx(max(r["val_top1"] for r in rows))
    for group in ("many", "medium", "few"):  # the shot groups of every evaluated epoch, the last one's as final.json's
        assert rows[-1][f"val_{group}"] == on_disk[group]
    assert {"many", "medium", "few", "top5", "per_class", "confusion", "class_counts"} <= on_disk.keys()
    assert on_disk["epochs"] == 4 and on_disk["num_params"] == 538_778 - GREY_STEM


def test_best_and_last_checkpoints(finished: tuple[RunDir, dict]) -> None:
    run, final = finished
    last, best = load_checkpoint(run.last), load_checkpoint(run.best)
    assert last["format"] == CHECKPOINT_FORMAT and last["epoch"] == 4
    assert best["epoch"] == final["best_epoch"]
    assert best["best_top1"] == pytest.approx(final["best_top1"])
    assert last["config"]["train"]["epochs"] == 4


def test_resume_equals_uninterrupted(finished: tuple[RunDir, dict], tmp_path: Path) -> None:
    reference, ref_final = finished
    out = tmp_path / "interrupted"
    with pytest.raises(Stop):
        start_run(load_config(None, TINY), out, progress=False, log=_stop_after(2))
    run = RunDir(out)
    assert load_checkpoint(run.last)["epoch"] == 2
    assert len(read_metrics(run.metrics)) == 2
    assert not run.final.exists()

    _, final = resume_run(out, progress=False, log=_quiet)
    a, b = load_checkpoint(reference.last), load_checkpoint(run.last)
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert _rows(run) == _rows(reference)
    assert final["top1"] == ref_final["top1"] and final["best_epoch"] == ref_final["best_epoch"]


def test_a_run_records_the_precision_it_resolved(finished: tuple[RunDir, dict]) -> None:
    run, final = finished
    here = speed.resolve_precision("auto", torch.device("cpu"))  # TINY keeps the default, auto
    assert final["precision"] == {"name": here.name, "why": here.why}
    assert json.loads(run.final.read_text())["precision"]["name"] == here.name
    assert load_checkpoint(run.last)["precision"] == load_checkpoint(run.best)["precision"] == final["precision"]


def test_resume_keeps_the_runs_precision_or_changes_it_only_when_asked(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bf16"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # a host with bf16
    with pytest.raises(Stop):
        start_run(load_config(None, [*TINY, "train.epochs=3", "train.milestones=[2]"]), out, progress=False,
                  log=_stop_after(1))
    assert load_checkpoint(RunDir(out).last)["precision"]["name"] == "bf16"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)  # resumed on one without
    lines: list[str] = []
    with pytest.raises(Stop):
        resume_run(out, progress=False, log=lambda line: (lines.append(line), _stop_after(2)(line)))
    kept = [line for line in lines if line.startswith("precision bf16 (auto: this CPU runs bf16 natively")]
    assert kept and "emulates bf16" in kept[0], lines  # the run's own precision and reason, and what it costs here
    last = load_checkpoint(RunDir(out).last)
    assert last["epoch"] == 2 and last["precision"]["name"] == "bf16"
    last["precision"] = "fp16"  # a run trained on a CUDA device without bf16, resumed on a CPU
    save_checkpoint(last, RunDir(out).last)
    with pytest.raises(BBNError, match="--precision fp32"):
        resume_run(out, progress=False, log=_quiet)
    _, final = resume_run(out, progress=False, log=_quiet, precision="fp32")
    assert final["precision"]["name"] == "fp32" and "was fp16: not bit-exact" in final["precision"]["why"]


def test_resume_of_a_finished_run_changes_nothing(finished: tuple[RunDir, dict]) -> None:
    run, final = finished
    before = _rows(run)
    _, again = resume_run(run.root, progress=False, log=_quiet)
    assert _rows(run) == before
    assert again["top1"] == final["top1"]


def test_ce_baseline_trains(tmp_path: Path) -> None:
    cfg = load_config("digits_ce", ["train.epochs=2", "train.tensorboard=false", "train.threads=1"])
    run, final = start_run(cfg, tmp_path / "ce", progress=False, log=_quiet)
    rows = read_metrics(run.metrics)
    assert [r["alpha"] for r in rows] == [None, None]
    assert final["num_params"] == 464_154 - GREY_STEM  # plain ResNet-32, 10 classes, 1 channel
    # each epoch ran at the schedule's rate (epoch 1 and 2 of the 5-epoch warm-up)
    assert [r["lr"] for r in rows] == pytest.approx([learning_rate(e, cfg.train) for e in (1, 2)])
    assert rows[0]["lr"] < rows[1]["lr"] < cfg.train.lr
    # the optimiser moved the weights: the training loss falls by a clear margin (measured
    # 1.88 -> 1.07) and the shown accuracy rises; an epoch without updates keeps both level
    assert rows[1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    assert rows[1]["train_acc"] > rows[0]["train_acc"] + 5.0
    # final.json reports the saved models: re-evaluating last.pt gives its per-class numbers,
    # best.pt its best top-1
    last = eval_command(run.last, "cpu")
    assert last["epoch"] == 2 and last["per_class"] == pytest.approx(final["per_class"])
    assert last["top1"] == pytest.approx(final["top1"])
    best = eval_command(run.best, "cpu")
    assert best["epoch"] == final["best_epoch"] and best["top1"] == pytest.approx(final["best_top1"])


def test_continue_run_starts_reuses_and_restarts_an_empty_folder(finished: tuple[RunDir, dict],
                                                                  tmp_path: Path) -> None:
    run, final = finished
    lines: list[str] = []
    again, reused = continue_run(load_config(None, TINY), run.root, progress=False, log=lines.append)
    assert reused == json.loads(run.final.read_text()) and lines == [f"reusing the finished run {run.root}"]
    # a folder stopped before its first epoch is restarted in place; one of another config is
    # refused, and nothing in it deleted
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.yaml").write_text("name: whatever\n")
    cfg = load_config(None, [*TINY, "train.epochs=1", "train.milestones=[1]"])  # given milestones fit the run
    with pytest.raises(BBNError, match="was trained with "):
        continue_run(cfg, empty, progress=False, log=_quiet)
    assert (empty / "config.yaml").read_text() == "name: whatever\n"
    save_config(cfg, empty / "config.yaml")
    _, fresh = continue_run(cfg, empty, progress=False, log=_quiet)
    assert fresh["epochs"] == 1
    with pytest.raises(BBNError, match="was trained with train.epochs=1, not 4"):
        continue_run(load_config(None, TINY), empty, progress=False, log=_quiet)
