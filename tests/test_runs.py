"""The run folder's safety: one process at a time (RUN/.lock), nothing deleted that bbn did
not write, a folder that stopped before its first checkpoint restarted in place, and a
resume refused in one line when config.yaml or last.pt belong to another run."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_checks import assert_bad_input

from bbn.tools import runner
from bbn.engine.checkpoint import load_checkpoint, save_checkpoint
from bbn.cli import main
from bbn.config import load_config, save_config
from bbn.errors import BBNError
from bbn.engine.runs import RunDir, RunLock

ONE_EPOCH = ["train.epochs=1", "train.warmup_epochs=0", "train.milestones=[1]", "train.tensorboard=false",
             "train.threads=1", "train.device=cpu", "data.n_max=20", "data.test_max_per_class=5"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch digits run."""
    out = tmp_path_factory.mktemp("runs") / "finished"
    assert main(["train", "digits_bbn", *ONE_EPOCH, "--no-progress", "--out", str(out)]) == 0
    return out


def _stopped_copy(finished: Path, tmp_path: Path) -> RunDir:
    """A copy of `finished` as it was before its final evaluation: it resumes to the end."""
    run = RunDir(tmp_path / "stopped")
    run.checkpoints.mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        (run.root / name).write_bytes((finished / name).read_bytes())
    return run


def test_a_locked_folder_is_refused_naming_the_holder_and_freed_when_it_is_killed(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from bbn.engine.runs import RunLock; "
         f"RunLock(Path({str(tmp_path)!r})).acquire(); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(BBNError, match=rf"is in use by process {holder.pid} \(it holds .*\.lock\); wait"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.release()


def test_resume_auto_deletes_no_file_of_a_folder_that_never_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    items = ["image_folder_bbn", f"data.root={tmp_path / 'no-images'}", "train.threads=1"]
    monkeypatch.chdir(tmp_path)  # --out . : the user's own folder
    save_config(load_config(items[0], items[1:]), tmp_path / "config.yaml")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "model.ckpt").write_text("a user's weights")
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "notes.txt").write_text("a user's notes")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert_bad_input(["train", *items, "--no-progress", "--out", ".", "--resume", "auto"], capsys, "no-images")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.name != ".lock") == before
    assert (tmp_path / ".lock").read_text() == ""  # released


def test_an_early_error_removes_only_what_the_run_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()  # an existing empty folder as --out

    def fit_until_the_disk_is_full(trainer, state, run, progress, log, on_finish=None):
        (out / "mine.txt").write_text("a file another program put there meanwhile")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner, "fit", fit_until_the_disk_is_full)
    assert_bad_input(["train", "digits_bbn", *ONE_EPOCH, "--no-progress", "--out", str(out)], capsys,
                     "No space left on device", "what the unfinished run wrote was removed")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_resume_of_a_run_stopped_before_its_first_checkpoint_restarts_it_in_place(
        finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = RunDir(tmp_path / "early")
    run.root.mkdir()
    run.config.write_bytes((finished / "config.yaml").read_bytes())
    (run.root / "notes.txt").write_text("kept")
    assert main(["train", "--resume", str(run.root), "--no-progress"]) == 0
    assert f"restarting from the start (no checkpoint yet): {run.root}" in capsys.readouterr().out
    assert (run.root / "notes.txt").read_text() == "kept"
    assert json.loads(run.final.read_text())["top1"] == json.loads((finished / "final.json").read_text())["top1"]


def test_resume_refuses_an_edited_config(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _stopped_copy(finished, tmp_path)
    run.config.write_text(run.config.read_text().replace("seed: 0", "seed: 3"))
    assert_bad_input(["train", "--resume", str(run.root)], capsys, "config.yaml' says seed=3",
                     "last.pt' was trained with 0", "set seed back in config.yaml")
    run.config.write_bytes((finished / "config.yaml").read_bytes())
    run.config.write_text(run.config.read_text().replace("threads: 1", "threads: 2"))  # execution only: accepted
    assert main(["train", "--resume", str(run.root), "--no-progress"]) == 0


def test_resume_refuses_a_checkpoint_of_another_model(finished: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run = _stopped_copy(finished, tmp_path)
    payload = load_checkpoint(run.last)
    payload["model"] = {k: v for k, v in payload["model"].items() if "classifier" not in k}
    save_checkpoint(payload, run.last)
    assert_bad_input(["train", "--resume", str(run.root)], capsys, "last.pt' does not fit the model of",
                     "put back the run's own last.pt")


def test_an_existing_file_as_out_is_named_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    line = assert_bad_input(["train", "digits_bbn", *ONE_EPOCH, "--out", str(target)], capsys,
                            "is a file, not a folder", "choose a folder")
    assert "--resume" not in line and target.read_text() == "mine"
