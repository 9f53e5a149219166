"""SIGTERM / SIGINT: the step finishes, last.pt holds the mid-epoch position, `bbn train` exits
with EXIT_PREEMPTED, and the resumed run equals an uninterrupted one bit for bit; `--resume
auto` continues, reuses or starts a run."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from cli_checks import assert_bad_input
from kill_harness import differences

from bbn.engine import preemption
from bbn.tools import runner
from bbn.engine.checkpoint import load_checkpoint, previous_path
from bbn.cli import main
from bbn.config import load_config
from bbn.errors import EXIT_PREEMPTED
from bbn.methods.bbn import BBN
from bbn.engine.runs import RunDir, read_metrics
from bbn.tools.runner import start_run

# digits-LT with a head class of 60 images: 201 training images, 6 steps an epoch, 4 epochs
TINY = ["train.epochs=4", "train.warmup_epochs=1", "train.milestones=[3]", "train.tensorboard=false",
        "train.threads=1", "train.device=cpu", "data.n_max=60", "data.test_max_per_class=10", "train.log_every=2"]
STEPS = 6


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("preemption") / "uninterrupted"
    start_run(load_config("digits_bbn", TINY), out, progress=False, log=lambda _line: None)
    return out


def signal_at_step(monkeypatch: pytest.MonkeyPatch, signum: int, call: int) -> None:
    """Send `signum` to this process from inside the `call`-th training step (1-based)."""
    real_step, calls = BBN.step, [0]

    def step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signum)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(BBN, "step", step)


@pytest.mark.parametrize("signum, resume", [(signal.SIGTERM, "--resume RUN"), (signal.SIGINT, "--resume auto")])
def test_a_stop_signal_checkpoints_mid_epoch_and_the_resume_is_exact(
        signum: int, resume: str, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stopped"
    handlers = {sig: signal.getsignal(sig) for sig in preemption.STOP_SIGNALS}
    signal_at_step(monkeypatch, signum, STEPS + 3)  # epoch 2, step 3
    train = ["train", "digits_bbn", *TINY, "--no-progress", "--out", str(out)]
    assert main(train) == EXIT_PREEMPTED
    err = capsys.readouterr().err.strip().splitlines()
    run = RunDir(out)
    assert err[-1] == (f"bbn: stopped by {signal.Signals(signum).name} at epoch 2, step 3/{STEPS}; wrote {run.last}; "
                       f"continue with 'bbn train --resume {out}'")
    assert {sig: signal.getsignal(sig) for sig in preemption.STOP_SIGNALS} == handlers
    payload = load_checkpoint(run.last)
    assert payload["epoch"] == 1 and payload["partial"]["epoch"] == 2 and payload["partial"]["step"] == 3
    assert load_checkpoint(previous_path(run.last))["epoch"] == 1  # the end of epoch 1, kept
    assert [row["epoch"] for row in read_metrics(run.metrics)] == [1] and not run.final.exists()
    monkeypatch.undo()

    if resume == "--resume RUN":
        again = ["train", "--resume", str(out)]
    else:
        again = ["train", "digits_bbn", *TINY, "--out", str(out), "--resume", "auto"]
    assert main(again) == 0  # with the progress bar, which picks up at step 3 of epoch 2
    captured = capsys.readouterr()
    assert f"resuming {out} at epoch 2, step 3/{STEPS}" in captured.out
    assert re.search(rf"epoch 2/4: +50%\|[^|]*\| 3/{STEPS} ", captured.err), captured.err[:400]
    assert not re.search(r"epoch 2/4: +\d+%\|[^|]*\| [0-2]/", captured.err)
    assert differences(reference, out) == []


def test_resume_auto_reuses_a_finished_run_and_refuses_another_config(
        reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    final = RunDir(reference).final
    before = final.stat().st_mtime_ns
    assert main(["train", "digits_bbn", *TINY, "--no-progress", "--out", str(reference), "--resume", "auto"]) == 0
    assert f"reusing the finished run {reference}" in capsys.readouterr().out
    assert final.stat().st_mtime_ns == before
    assert_bad_input(["train", "digits_bbn", *TINY, "seed=1", "--out", str(reference), "--resume", "auto"], capsys,
                     "was trained with seed=0, not 1")
    assert_bad_input(["train", "digits_bbn", "--resume", "auto"], capsys, "--resume auto needs --out")


def test_resume_auto_starts_a_missing_or_never_trained_run(tmp_path: Path) -> None:
    one_epoch = [*TINY, "train.epochs=1", "train.milestones=[1]"]
    out = tmp_path / "new"
    (out / "checkpoints").mkdir(parents=True)  # made, then killed before config.yaml was written
    assert main(["train", "digits_bbn", *one_epoch, "--no-progress", "--out", str(out), "--resume", "auto"]) == 0
    assert json.loads(RunDir(out).final.read_text())["epochs"] == 1


def test_a_signal_before_training_stops_it_as_it_starts(reference: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    real_build = runner.build_trainer

    def build_then_signal(cfg, **kwargs):
        trainer = real_build(cfg, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # while the data and model are being made
        return trainer

    monkeypatch.setattr(runner, "build_trainer", build_then_signal)
    out = tmp_path / "early"
    assert main(["train", "digits_bbn", *TINY, "--no-progress", "--out", str(out)]) == EXIT_PREEMPTED
    assert "stopped by SIGTERM after epoch 0;" in capsys.readouterr().err
    payload = load_checkpoint(RunDir(out).last)
    assert payload["epoch"] == 0 and payload["partial"] is None
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert differences(reference, out) == []


def test_a_second_signal_acts_at_once() -> None:
    # from Python's own SIGINT handler, whatever the test process inherited (a job started in
    # the background of a shell without job control inherits SIGINT ignored)
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _second_signal_acts_at_once()
    finally:
        signal.signal(signal.SIGINT, original)


def _second_signal_acts_at_once() -> None:
    previous = signal.getsignal(signal.SIGINT)
    with preemption.stop_requests():
        assert preemption.requested() is None
        os.kill(os.getpid(), signal.SIGINT)
        with preemption.stop_requests():  # nested: changes nothing, the request stays pending
            assert preemption.requested() == signal.SIGINT
        assert preemption.requested() == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is previous
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert preemption.requested() is None and signal.getsignal(signal.SIGINT) is previous
