"""`bbn train | eval | data` end to end, and bad input: one line, exit code 2, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cifar_format import dump_pickle, write_cifar10
from cli_checks import assert_bad_input

from bbn.cli import main
from bbn.errors import EXIT_BAD_INPUT

FAST = ["train.tensorboard=false", "train.threads=1"]


def bbn_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI in a fresh interpreter, as a user would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "bbn", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_train_end_to_end_on_digits(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = bbn_process("train", "configs/digits_bbn.yaml", "train.epochs=2", *FAST, "--no-progress",
                       "--out", str(out), cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    assert "top-1" in proc.stdout and "many" in proc.stdout and "few" in proc.stdout
    final = json.loads((out / "final.json").read_text())
    assert f"top-1 {final['top1']:.2f}%" in proc.stdout
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "report.md").is_file()

    # bbn eval on the run folder evaluates best.pt and writes eval.json
    proc = bbn_process("eval", str(out), "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads((out / "eval.json").read_text())
    assert evaluated["top1"] == pytest.approx(final["best_top1"])
    assert evaluated["checkpoint"].endswith("best.pt")


def test_data_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "digits_bbn"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert len(rows) == 10
    counts = [int(r[2]) for r in rows]
    assert counts == sorted(counts, reverse=True) and counts[0] / counts[-1] >= 19
    assert "shot groups:" in out


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, images_per_class_train=100, images_per_class_test=5)
    return root


def test_cifar10_preset_runs_unchanged(cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c10"
    code = main(["train", "configs/cifar10_ir100_bbn.yaml", f"data.root={cifar_root}", "train.epochs=1",
                 *FAST, "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    final = json.loads((out / "final.json").read_text())
    assert final["class_counts"][0] == 100 and final["class_counts"][-1] == 1  # IR 100 from n_max 100
    assert final["num_params"] == 538_778


# --- bad input ---------------------------------------------------------------------------


def _cifar_copy(src: Path, dst: Path) -> Path:
    folder = dst / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for f in (src / "cifar-10-batches-py").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_missing_cifar_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert_bad_input(["train", "cifar10_ir100_bbn", f"data.root={tmp_path}", "--out", str(out)], capsys,
                     str(tmp_path), "download")
    assert not out.exists()


def test_truncated_cifar_file(cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _cifar_copy(cifar_root, tmp_path / "data")
    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:5000])
    out = tmp_path / "run"
    assert_bad_input(["train", "cifar10_ir100_bbn", f"data.root={tmp_path / 'data'}", "--out", str(out)],
                     capsys, "data_batch_3", "truncated")
    assert not out.exists()


def test_label_out_of_range(cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _cifar_copy(cifar_root, tmp_path / "data")
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [10] + [0] * 9,
             b"data": np.zeros((10, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * 10}
    dump_pickle(batch, folder / "test_batch")
    out = tmp_path / "run"
    assert_bad_input(["train", "cifar10_ir100_bbn", f"data.root={tmp_path / 'data'}", "--out", str(out)],
                     capsys, "test_batch", "10")
    assert not out.exists()


def test_empty_class_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # digits has ~130 training images per class: IR 1000 leaves int(130/1000) = 0 for the last class
    out = tmp_path / "run"
    assert_bad_input(["train", "data.imbalance_ratio=1000", "--out", str(out)], capsys,
                     "no training images", "data.imbalance_ratio")
    assert not out.exists()


def test_unwritable_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_bad_input(["train", "train.epochs=1", *FAST, "--out", str(blocker / "run")], capsys,
                     "cannot write", "--out")
    assert blocker.read_text() == "not a folder"


def test_existing_run_folder_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("precious: true\n")
    assert_bad_input(["train", "--out", str(out)], capsys, "already exists", "--resume")
    assert (out / "config.yaml").read_text() == "precious: true\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.epoch=3", ("unknown config key 'train.epoch'", "train.epochs")),
        ("trian.epochs=3", ("unknown config key", "train")),
        ("train.epochs=abc", ("train.epochs", "integer")),
        ("train.lr=-1", ("train.lr", "greater than 0")),
        ("data.imbalance_ratio=0.5", ("data.imbalance_ratio", "greater than or equal to 1")),
        ("train.milestones=[160,120]", ("train.milestones", "increasing")),
        ("method.adaptor=parabolic", ("adaptor", "parabolic_decay")),
        ("model.name=resnet33", ("model", "resnet32")),
        ("data.source=cifar", ("data source", "cifar10")),
        ("train.device=tpu9", ("train.device",)),
    ],
)
def test_bad_config_values(override: str, words: tuple[str, ...], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert_bad_input(["train", override, "--out", str(out)], capsys, *words)
    assert not out.exists()


def test_missing_config_file_suggests_a_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert_bad_input(["train", "configs/cifar10_ir100_bnn.yaml"], capsys, "not found", "cifar10_ir100_bbn")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04broken zip"])
def test_eval_corrupt_checkpoint(content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(content)
    assert_bad_input(["eval", str(ckpt)], capsys, str(ckpt))


def test_eval_and_resume_of_missing_things(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_bad_input(["eval", str(tmp_path / "nope")], capsys, "does not exist")
    assert_bad_input(["train", "--resume", str(tmp_path)], capsys, "not a run folder")


def test_bad_input_in_a_fresh_process_has_no_traceback(tmp_path: Path) -> None:
    proc = bbn_process("train", "train.epoch=3", cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr.strip().splitlines() == [
        "bbn: error: unknown config key 'train.epoch'; did you mean 'train.epochs'?"
    ]
    assert not (tmp_path / "runs").exists()


def test_a_budget_run_of_a_preset_warns_once_and_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`train.epochs=N` shorter than the preset's schedule: one warning line, then the run."""
    code = main(["train", "digits_bbn", "train.epochs=1", "data.n_max=20", *FAST, "--no-progress",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert [line for line in err.splitlines() if line.startswith("bbn:")] == [
        "bbn: warning: train.epochs=1 ends the run before the learning-rate step at epoch 40, 52 "
        "(train.milestones) and the end of the 5-epoch warm-up (train.warmup_epochs): the shortened run "
        "keeps the schedule, so they never apply (train.budget=FRACTION instead scales the whole schedule "
        "with the run)"]
    assert (tmp_path / "run" / "final.json").is_file()


@pytest.mark.parametrize("command", [["predict", "model.pt", "image.png"], ["eval", "model.pt"]])
def test_a_device_option_is_checked_like_train_device(command: list[str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert_bad_input([*command, "--device", "meta"], capsys, "device 'meta' is not one bbn runs on", "cuda:N")


def test_the_protocol_end_to_end_on_cifar_format_data(cifar_root: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Two seeds of a CIFAR-10-LT preset with a validation split and a budget, a tau sweep
    chosen on the validation split, and one comparison table of both seeds."""
    runs = [tmp_path / f"s{seed}" for seed in (0, 1)]
    for seed, out in enumerate(runs):
        code = main(["train", "cifar10_ir10_logit_adjusted", f"data.root={cifar_root}", "data.val_per_class=2",
                     "train.budget=0.01", f"seed={seed}", *FAST, "--no-progress", "--out", str(out)])
        assert code == 0, capsys.readouterr().err
    final = json.loads((runs[0] / "final.json").read_text())
    assert final["selection"] == "val" and final["val_counts"] == [2] * 10
    assert final["class_counts"][0] == 98 and final["class_counts"][-1] == 8  # IR 10 from 100, 2 held out
    assert len((runs[0] / "metrics.jsonl").read_text().splitlines()) == 2  # 1 % of 200 epochs
    assert main(["eval", str(runs[0]), "--adjust", "logit:tau=sweep"]) == 0
    swept = json.loads((runs[0] / "eval.json").read_text())["adjusted"]["logit:tau=sweep"]
    assert swept["selection"] == "val" and swept["tau"] in [round(0.1 * i, 1) for i in range(21)]
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "2 seeds" in table and "val" in table
