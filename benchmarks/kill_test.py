"""Kill test, long version: one digits-LT run interrupted many times at random moments, each
time continued by the same `bbn train ... --resume auto` command in a fresh interpreter, and
compared bit for bit with an uninterrupted run.

    python benchmarks/kill_test.py [--kills 20] [--terms 5] [--seed S] [--append]

The uninterrupted run goes first and times its training (from the line that says training
starts to its exit, the final evaluation and report included). `--kills` SIGKILLs and
`--terms` SIGTERMs are sent in a shuffled order, each at a moment drawn uniformly from
[0, 2 r / (k + 1)] seconds after the process says training starts, r being that time scaled
by the share of epochs still to train (at least 10 %) and k the signals still to send: the
moments spread over the whole run, evaluation, checkpoint writing and report included. After
each, the run folder must hold a last.pt that passes its checksum and a metrics.jsonl that
agrees with it; each attempt records the fault points (bbn.engine.faults) it passed, and the table
line of an attempt names the last one, i.e. where the signal landed. Then the run is left to finish, and its last.pt weights and optimiser state,
metrics.jsonl and final.json (timings excluded) are compared with the uninterrupted run's.
Prints a table; --append adds it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kill_harness import FreshProcesses, Launcher, check_consistent, differences, train_args  # noqa: E402

from bbn.engine.checkpoint import load_checkpoint  # noqa: E402
from bbn.engine.runs import RunDir  # noqa: E402

EPOCHS = 20
CONFIG = ["digits_bbn", f"train.epochs={EPOCHS}", "train.warmup_epochs=2", "train.milestones=[14,18]",
          "train.tensorboard=false", "train.threads=1", "train.device=cpu", "data.n_max=60",
          "data.test_max_per_class=20", "train.log_every=2"]
# --smoke: 3 short epochs on a few images, only to show the script works (later keys win).
SMOKE_EPOCHS = 3
SMOKE = [f"train.epochs={SMOKE_EPOCHS}", "train.warmup_epochs=1", "train.milestones=[2]", "data.n_max=20",
         "data.test_max_per_class=5"]


# Lines `bbn train` prints once training is about to begin (or the run is already finished).
STARTED = ("run folder: ", "resuming ", "restarting from the start", "reusing the finished run ")


@dataclass
class Attempt:
    """One process: the signal sent (None: left to finish), whether it hit a running process,
    its exit code, the seconds from start to exit and from the line saying that training
    starts to exit (None if it never said so), the last fault point it passed, its output."""

    signal: str | None
    delivered: bool
    returncode: int
    seconds: float
    after_start: float | None
    last_point: str
    output: str


def run_once(launcher: Launcher, args: list[str], log: Path, signum: int | None = None, delay: float = 0.0,
             timeout: float = 600.0) -> Attempt:
    """Run `bbn ARGS`; when `signum` is given, send it `delay` seconds after the process says
    it has started training (if it is still running then). A benchmark of random moments:
    the tests stop processes at fault points instead."""
    points = log.with_suffix(".points")
    points.unlink(missing_ok=True)
    launched = time.monotonic()
    pid = launcher.start(args, log, {"BBN_FAULT_LOG": str(points)})
    seen: float | None = None
    delivered = False
    try:
        while (code := launcher.poll(pid)) is None:
            now = time.monotonic()
            if seen is None and any(s in log.read_text() for s in STARTED):
                seen = now
            if signum is not None and not delivered and seen is not None and now - seen >= delay:
                os.kill(pid, signum)
                delivered = True
            if now - launched > timeout:
                raise TimeoutError(f"bbn {' '.join(args)} did not end within {timeout:.0f} s")
            time.sleep(0.01)
    except BaseException:
        if launcher.poll(pid) is None:
            os.kill(pid, signal.SIGKILL)
            launcher.wait(pid)
        raise
    end = time.monotonic()
    if delivered and signum == signal.SIGKILL and code == 0:
        delivered = False  # it had already exited (not yet reaped) when the signal was sent
    name = signal.Signals(signum).name if signum is not None else None
    hit = points.read_text().splitlines() if points.is_file() else []
    return Attempt(name, delivered, code, end - launched, None if seen is None else end - seen,
                   hit[-1] if hit else "-", log.read_text())


def _epochs_done(run: RunDir) -> int:
    return load_checkpoint(run.last)["epoch"] if run.last.is_file() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to send (default 20)")
    parser.add_argument("--terms", type=int, default=5, help="SIGTERMs to send among them (default 5)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the moments (default: random, printed)")
    parser.add_argument("--out", type=Path, default=None, help="keep the run folders here (default: a temp folder)")
    parser.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_EPOCHS} epochs on a few images: only "
                        "checks the script works (with e.g. --kills 1 --terms 0)")
    args = parser.parse_args()
    if args.smoke and args.append:
        parser.error("--smoke figures mean nothing; drop --append")
    config, epochs = ([*CONFIG, *SMOKE], SMOKE_EPOCHS) if args.smoke else (CONFIG, EPOCHS)
    seed = random.randrange(2**32) if args.seed is None else args.seed
    rng = random.Random(seed)
    root = args.out or Path(tempfile.mkdtemp(prefix="bbn-kill-test-"))
    root.mkdir(parents=True, exist_ok=True)
    launcher = FreshProcesses()
    started = time.monotonic()
    try:
        reference = run_once(launcher, train_args(config, root / "uninterrupted"), root / "uninterrupted.log")
        if reference.returncode != 0:
            print(reference.output, file=sys.stderr)
            return 1
        window = reference.after_start or reference.seconds
        signals = [signal.SIGKILL] * args.kills + [signal.SIGTERM] * args.terms
        rng.shuffle(signals)
        run = RunDir(root / "interrupted")
        command = train_args(config, run.root)
        attempts, damaged = [], 0
        for i, signum in enumerate(signals):
            remaining = window * max(1 - _epochs_done(run) / epochs, 0.1)
            delay = rng.uniform(0, 2 * remaining / (len(signals) - i + 1))
            attempt = run_once(launcher, command, root / f"attempt{i:02d}.log", signum, delay)
            attempts.append(attempt)
            try:
                check_consistent(run)
            except AssertionError as exc:
                damaged += 1
                print(f"attempt {i}: {exc}", file=sys.stderr)
            print(f"{i + 1:>3}/{len(signals)} {attempt.signal:<7} after {delay:4.1f}s: exit {attempt.returncode:>3}, "
                  f"{attempt.seconds:5.1f}s, last point {attempt.last_point}, epochs done {_epochs_done(run)}", flush=True)
        final = run_once(launcher, command, root / "final.log")
        found = differences(root / "uninterrupted", run.root) if final.returncode == 0 else ["did not finish"]
    finally:
        launcher.close()
    wall = time.monotonic() - started
    kills = [a for a in attempts if a.signal == "SIGKILL"]
    terms = [a for a in attempts if a.signal == "SIGTERM"]
    resumes = sum("resuming " in a.output for a in [*attempts, final])
    text = "\n".join([
        "| SIGKILL sent / ended the process | SIGTERM sent / exit 75 | resumes | damaged run folders "
        "| weights, optimiser, metrics, final.json equal | wall s |",
        "|---|---|---|---|---|---|",
        f"| {len(kills)} / {sum(a.returncode == -signal.SIGKILL for a in kills)} "
        f"| {len(terms)} / {sum(a.returncode == 75 for a in terms)} | {resumes} | {damaged} "
        f"| {'yes' if not found else 'no: ' + ', '.join(found[:5])} | {wall:.0f} |",
    ])
    kept = args.out is not None or bool(found) or bool(damaged)
    if not kept:
        shutil.rmtree(root)
    print(f"\nseed {seed}; uninterrupted run {reference.seconds:.1f} s, of it training {window:.1f} s"
          f"{f'; run folders in {root}' if kept else ''}\n")
    print(text)
    if args.append:
        from throughput import append_results

        append_results("Kill test", "cpu",
                       f"digits-LT, {EPOCHS} epochs, head class 60 images, 1 thread; moments seeded with {seed}; "
                       "each attempt a fresh interpreter running `bbn train ... --resume auto`.", text)
    return 0 if not found and not damaged else 1



if __name__ == "__main__":
    sys.exit(main())
