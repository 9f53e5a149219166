"""Real `bbn train` processes stopped at each named fault point (bbn.engine.faults) in turn, by
progress, never by elapsed time: after a SIGKILL at every point of the run-folder protocol
the same `bbn train ... --resume auto` command continues, and the run ends with the weights,
optimiser state, best.pt and metrics of an uninterrupted run, bit for bit. A SIGTERM exits
EXIT_PREEMPTED, except during the final evaluation and report, which finish (exit 0). A
second process on a locked run folder is refused at once, naming the holder.
(The long version, random moments in fresh interpreters: benchmarks/kill_test.py.)"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Iterator

import pytest
import torch
from kill_harness import Attempt, ForkServer, check_consistent, differences, run_once, train_args

from bbn.engine.checkpoint import load_checkpoint
from bbn.errors import EXIT_BAD_INPUT, EXIT_PREEMPTED
from bbn.engine.faults import POINTS
from bbn.engine.runs import RunDir, RunLock

# digits-LT with a head class of 30 images, 3 steps an epoch, 3 epochs
TINY = ["digits_bbn", "train.epochs=3", "train.warmup_epochs=1", "train.milestones=[2]", "train.tensorboard=false",
        "train.threads=1", "train.device=cpu", "data.n_max=30", "data.test_max_per_class=5", "train.log_every=2"]
STEPS = 3
# One run killed at each point in turn, each kill in the process that resumed from the one
# before (a point's hits are counted per process): what each kill leaves is the next start.
KILLS = ["run.created:1",              # config.yaml only: the next one restarts in place
         "train.step:2",               # inside epoch 1
         "train.evaluated:1",          # epoch 1 trained, nothing written
         "checkpoint.temp_written:1",  # last.pt of epoch 1 in its temporary file only
         "train.last_written:1",       # last.pt of epoch 1, no best.pt yet: the resume writes it
         "checkpoint.previous_kept:1",  # epoch 2: last.pt kept as last.prev.pt, the new one not written
         "train.best_written:1",       # epoch 2 complete but for metrics.jsonl
         "train.metrics_written:1",    # epoch 3 complete on disk
         "finish.evaluated:1",         # final evaluation done, no report
         "finish.report_written:1"]    # report written, no final.json


@pytest.fixture(scope="module")
def server() -> Iterator[ForkServer]:
    launcher = ForkServer()
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def reference(server: ForkServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Attempt]:
    """The uninterrupted run, with every fault point it hits."""
    folder = tmp_path_factory.mktemp("kill")
    done = run_once(server, train_args(TINY, folder / "uninterrupted"), folder / "uninterrupted.log")
    assert done.returncode == 0, done.output
    return folder / "uninterrupted", done


def test_an_uninterrupted_run_hits_every_fault_point(reference: tuple[Path, Attempt]) -> None:
    hits = reference[1].points
    assert set(hits) == set(POINTS)
    assert hits.count("train.step") == 3 * STEPS and hits.count("train.last_written") == 3
    assert [p for p in dict.fromkeys(hits)] == list(POINTS)  # first reached in the documented order


def _killed_at(attempt: Attempt) -> None:
    point, n = attempt.fault.split(":")[:2]
    assert attempt.returncode == -signal.SIGKILL, attempt.output
    assert attempt.points[-1] == point and attempt.points.count(point) == int(n), attempt.points


def test_a_sigkill_at_each_fault_point_then_resume_equals_an_uninterrupted_run(
        server: ForkServer, reference: tuple[Path, Attempt], tmp_path: Path) -> None:
    assert {k.split(":")[0] for k in KILLS} == set(POINTS)
    run = RunDir(tmp_path / "killed")
    args = train_args(TINY, run.root)
    for i, fault in enumerate(KILLS):
        attempt = run_once(server, args, tmp_path / f"attempt{i:02d}.log", fault)
        _killed_at(attempt)
        check_consistent(run)
        if fault == "checkpoint.temp_written:1":
            assert not run.last.exists() and list(run.checkpoints.glob(".last.pt.*.tmp"))
        if fault == "train.last_written:1":  # the instant between the two checkpoints of epoch 1
            assert load_checkpoint(run.last)["epoch"] == 1 and not run.best.exists()
    final = run_once(server, args, tmp_path / "final.log")
    assert final.returncode == 0 and "resuming " in final.output, final.output
    assert differences(reference[0], run.root) == []
    best, expected = load_checkpoint(run.best), load_checkpoint(RunDir(reference[0]).best)
    assert best["epoch"] == expected["epoch"]
    assert all(torch.equal(best["model"][k], v) for k, v in expected["model"].items())
    assert not list(run.checkpoints.glob("*.tmp")) and not list(run.root.glob(".*.tmp"))


def test_sigterm_exits_75_with_last_pt_but_lets_the_final_evaluation_finish(
        server: ForkServer, reference: tuple[Path, Attempt], tmp_path: Path) -> None:
    run = RunDir(tmp_path / "terminated")
    args = train_args(TINY, run.root)
    stopped = run_once(server, args, tmp_path / "step.log", f"train.step:{STEPS + 2}:term")  # epoch 2, step 2
    assert stopped.returncode == EXIT_PREEMPTED == 75, stopped.output
    assert stopped.output.strip().splitlines()[-1] == (
        f"bbn: stopped by SIGTERM at epoch 2, step 2/{STEPS}; wrote {run.last}; "
        f"continue with 'bbn train --resume {run.root}'")
    assert load_checkpoint(run.last)["partial"]["step"] == 2
    check_consistent(run)
    writing = run_once(server, args, tmp_path / "writing.log", "checkpoint.temp_written:1:term")  # end of epoch 2
    assert writing.returncode == 75 and "stopped by SIGTERM after epoch 2;" in writing.output, writing.output
    assert writing.points.count("train.step") == STEPS - 2  # the rest of epoch 2; nothing of epoch 3 ran
    assert load_checkpoint(run.last)["epoch"] == 2
    final = run_once(server, args, tmp_path / "final.log", "finish.evaluated:1:term")
    assert final.returncode == 0 and "finish.evaluated" in final.points, final.output
    assert run.final.is_file() and differences(reference[0], run.root) == []


def test_a_second_process_is_refused_while_the_first_holds_the_run(server: ForkServer, tmp_path: Path) -> None:
    run = RunDir(tmp_path / "locked")
    holder = server.start(train_args(TINY, run.root), tmp_path / "holder.log", {"BBN_FAULT": "train.step:1:stop"})
    try:
        assert server.wait(holder, stopped=True) is None, (tmp_path / "holder.log").read_text()  # frozen in epoch 1
        for i, args in enumerate([["train", "--resume", str(run.root), "--no-progress"], train_args(TINY, run.root)]):
            second = run_once(server, args, tmp_path / f"second{i}.log")
            assert second.returncode == EXIT_BAD_INPUT, second.output
            line = second.output.strip()
            assert line.count("\n") == 0 and f"is in use by process {holder} " in line, line
            assert run.config.is_file()  # --resume auto deleted nothing of the live run
        with pytest.raises(Exception, match=f"in use by process {holder} "):
            RunLock(run.root).acquire()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder, signal.SIGKILL)
    assert server.wait(holder) == -signal.SIGKILL
    lock = RunLock(run.root)
    lock.acquire()  # the kernel dropped the killed holder's lock
    assert (run.root / ".lock").read_text() == f"{os.getpid()}\n"
    lock.release()
    assert (run.root / ".lock").read_text() == ""
