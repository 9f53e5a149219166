"""Signals at random moments to real `bbn train` processes: after SIGKILLs, and after a SIGTERM
(exit code EXIT_PREEMPTED), the run resumed with `--resume auto` ends with the weights,
optimiser state and metrics of an uninterrupted run, bit for bit.
(The long version, 20+ kills in fresh interpreters: benchmarks/kill_test.py.)"""

from __future__ import annotations

import functools
import random
import signal
from pathlib import Path
from typing import Callable, Iterator

import pytest
from kill_harness import (ForkServer, check_consistent, differences, interrupt_until_done, run_once, train_args,
                          wait_for)

from bbn.checkpoint import load_checkpoint
from bbn.errors import EXIT_PREEMPTED
from bbn.runs import RunDir

# digits-LT with a head class of 60 images (201 training images, 6 steps an epoch), 5 epochs
TINY = ["digits_bbn", "train.epochs=5", "train.warmup_epochs=1", "train.milestones=[4]", "train.tensorboard=false",
        "train.threads=1", "train.device=cpu", "data.n_max=60", "data.test_max_per_class=10", "train.log_every=2"]
KILLS = 3
SPAN_S = 2.0  # a signal lands up to this long after training started: in training, evaluation or writing


@pytest.fixture(scope="module")
def server() -> Iterator[ForkServer]:
    launcher = ForkServer()
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def reference(server: ForkServer, tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Path]:
    """The uninterrupted run, started now and running beside the tests; call to wait for it."""
    folder = tmp_path_factory.mktemp("kill")
    pid = server.start(train_args(TINY, folder / "uninterrupted"), folder / "uninterrupted.log")

    @functools.cache
    def finished() -> Path:
        assert wait_for(server, pid, 300) == 0, (folder / "uninterrupted.log").read_text()
        return folder / "uninterrupted"

    return finished


def _rng() -> tuple[random.Random, int]:
    seed = random.randrange(2**32)
    return random.Random(seed), seed


def _story(seed: int, attempts: list) -> str:
    return f"seed {seed}: " + ", ".join(f"{a.signal or 'none'} delivered={a.delivered} rc={a.returncode} "
                                        f"{a.seconds:.1f}s" for a in attempts)


def test_three_sigkills_then_resume_equal_an_uninterrupted_run(server: ForkServer, reference: Callable[[], Path],
                                                               tmp_path: Path) -> None:
    rng, seed = _rng()
    run = tmp_path / "killed"
    attempts = interrupt_until_done(server, train_args(TINY, run), tmp_path, [signal.SIGKILL] * KILLS, SPAN_S, rng)
    story = _story(seed, attempts)
    killed = [a for a in attempts if a.delivered]
    assert all(a.returncode == -signal.SIGKILL for a in killed), story
    assert len(killed) >= 2, story  # kills hit running processes (the third may find the run done)
    assert attempts[-1].returncode == 0, attempts[-1].output
    assert differences(reference(), run) == [], story


def test_sigterm_exits_75_with_last_pt_and_the_resume_is_exact(server: ForkServer, reference: Callable[[], Path],
                                                               tmp_path: Path) -> None:
    rng, seed = _rng()
    run = tmp_path / "terminated"
    args = train_args(TINY, run)
    stopped = run_once(server, args, tmp_path / "stopped.log", signal.SIGTERM, rng.uniform(0.0, 1.5))
    assert stopped.delivered and stopped.returncode == EXIT_PREEMPTED == 75, f"seed {seed}: {stopped.output}"
    message = stopped.output.strip().splitlines()[-1]
    assert message.startswith("bbn: stopped by SIGTERM ") and f"--resume {run}'" in message, message
    check_consistent(RunDir(run))
    payload = load_checkpoint(RunDir(run).last)
    if " at epoch " in message:  # a stop inside an epoch is saved with its position
        partial = payload["partial"]
        assert f"at epoch {partial['epoch']}, step {partial['step']}/6;" in message, message
    else:
        assert payload["partial"] is None and f"after epoch {payload['epoch']};" in message, message
    final = run_once(server, args, tmp_path / "final.log")
    assert final.returncode == 0 and "resuming " in final.output, final.output
    assert differences(reference(), run) == [], f"seed {seed}: {message}"
