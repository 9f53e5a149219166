"""Interrupt `bbn train` processes at random moments and compare what their resumes leave with
an uninterrupted run (used by tests/test_kill.py and benchmarks/kill_test.py).

Two ways to start a process: `FreshProcesses` runs `python -m bbn train ...` as a user would;
`ForkServer` runs `bbn.cli.main([...])` in a process forked from a server that has imported
the package once, so each start skips the interpreter's seconds of imports (the short test).
Either way every run is its own OS process and receives real signals.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from bbn.checkpoint import load_checkpoint
from bbn.runs import RunDir, read_metrics

TIMING_KEYS = frozenset({"epoch_s", "images_per_s", "train_s"})
# Lines `bbn train` prints once training is about to begin (or the run is already finished).
STARTED = ("run folder: ", "resuming ", "reusing the finished run ")


def train_args(items: list[str], out: Path) -> list[str]:
    """`train ITEMS --out OUT --resume auto`: starts, continues or reuses the run in OUT."""
    return ["train", *items, "--no-progress", "--out", str(out), "--resume", "auto"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}


class Launcher(Protocol):
    def start(self, args: list[str], log: Path) -> int:
        """Start `bbn ARGS` with stdout and stderr to `log`; its process id."""

    def poll(self, pid: int) -> int | None:
        """Its exit code (minus the signal number if a signal ended it), None while it runs."""


class FreshProcesses:
    """`python -m bbn ARGS` in a new interpreter per run."""

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, args: list[str], log: Path) -> int:
        with log.open("w") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "bbn", *args], stdout=sink, stderr=subprocess.STDOUT,
                                    env=_env())
        self.procs[proc.pid] = proc
        return proc.pid

    def poll(self, pid: int) -> int | None:
        return self.procs[pid].poll()

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class ForkServer:
    """A server process that imports bbn once and forks a child per run; the child runs
    `bbn.cli.main(ARGS)` and exits with its return code, as `python -m bbn ARGS` would."""

    def __init__(self) -> None:
        self.server = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, env=_env())

    def _ask(self, request: dict) -> dict:
        assert self.server.stdin is not None and self.server.stdout is not None
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        line = self.server.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited with code {self.server.wait()}")
        return json.loads(line)

    def start(self, args: list[str], log: Path) -> int:
        return self._ask({"start": args, "log": str(log)})["pid"]

    def poll(self, pid: int) -> int | None:
        return self._ask({"poll": pid})["returncode"]

    def close(self) -> None:
        if self.server.poll() is None:
            assert self.server.stdin is not None
            self.server.stdin.close()
            self.server.wait(timeout=60)


def _serve() -> None:
    """The fork server's loop: one JSON request per line on stdin, one answer per line."""
    import bbn.cli
    import bbn.data.prepare  # noqa: F401  (the imports a run needs, done once)
    import bbn.train  # noqa: F401

    answer = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        if "start" in request:
            fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # exists on reply
            pid = os.fork()
            if pid == 0:
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                code = 1
                try:
                    code = bbn.cli.main(request["start"])
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except BaseException:
                    import traceback

                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code if isinstance(code, int) else 0)
            os.close(fd)
            reply = {"pid": pid}
        else:
            pid, status = os.waitpid(request["poll"], os.WNOHANG)
            reply = {"returncode": None if pid == 0 else os.waitstatus_to_exitcode(status)}
        answer.write(json.dumps(reply) + "\n")
        answer.flush()


@dataclass
class Attempt:
    """One process: the signal sent (None: left to finish), whether it hit a running
    process, its exit code, the seconds from start to exit and from the line saying that
    training starts to exit (None if it never said so), and what it printed."""

    signal: str | None
    delivered: bool
    returncode: int
    seconds: float
    after_start: float | None
    output: str


def wait_for(launcher: Launcher, pid: int, seconds: float) -> int | None:
    """Poll until the process exits or `seconds` pass; its exit code or None."""
    end = time.monotonic() + seconds
    while (code := launcher.poll(pid)) is None and time.monotonic() < end:
        time.sleep(0.02)
    return code


def run_once(launcher: Launcher, args: list[str], log: Path, signum: int | None = None, delay: float = 0.0,
             timeout: float = 600.0) -> Attempt:
    """Run `bbn ARGS`; when `signum` is given, send it `delay` seconds after the process says
    it has started training (if it is still running then)."""
    launched = time.monotonic()
    pid = launcher.start(args, log)
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
            wait_for(launcher, pid, 60)
        raise
    end = time.monotonic()
    if delivered and signum == signal.SIGKILL and code == 0:
        delivered = False  # it had already exited (not yet reaped) when the signal was sent
    name = signal.Signals(signum).name if signum is not None else None
    return Attempt(name, delivered, code, end - launched, None if seen is None else end - seen, log.read_text())


def interrupt_until_done(launcher: Launcher, args: list[str], folder: Path, signals: list[int], span: float,
                         rng: random.Random, timeout: float = 600.0) -> list[Attempt]:
    """Send each of `signals` to a fresh run of `bbn ARGS` (the first starts the run, the
    others resume it) at a moment drawn uniformly from [0, span] s after training started,
    check what it left, then run it once more to the end. A signal that arrives after the
    run ended is recorded as not delivered."""
    run = RunDir(args[args.index("--out") + 1])
    attempts = []
    for i, signum in enumerate(signals):
        log = folder / f"attempt{i:02d}.log"
        attempts.append(run_once(launcher, args, log, signum, rng.uniform(0.0, span), timeout))
        check_consistent(run)
    attempts.append(run_once(launcher, args, folder / "final.log", timeout=timeout))
    return attempts


def _fail(line: str) -> None:
    raise AssertionError(f"an interrupted run left a damaged checkpoint: {line}")


def check_consistent(run: RunDir) -> None:
    """What an interrupted run leaves is whole: last.pt (when present) passes its checksum,
    metrics.jsonl parses and agrees with the checkpoint's history (it is written just after)."""
    if not run.last.exists():
        return
    payload = load_checkpoint(run.last, warn=_fail)
    rows = len(read_metrics(run.metrics))
    assert rows in (len(payload["history"]), len(payload["history"]) - 1), (rows, payload["epoch"])


def _same(x: object, y: object) -> bool:
    return torch.equal(x, y) if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) else x == y


def without_timing(obj: dict) -> dict:
    """A metrics row or final.json without its timings (which differ between equal runs)."""
    return {k: v for k, v in obj.items() if k not in TIMING_KEYS}


def differences(reference: Path, run: Path) -> list[str]:
    """What differs between two finished run folders: weights and optimiser state of
    last.pt (bit for bit), metrics.jsonl and final.json (timings excluded). Empty when equal."""
    a, b = RunDir(reference), RunDir(run)
    found = []
    ca, cb = load_checkpoint(a.last), load_checkpoint(b.last)
    if ca["model"].keys() != cb["model"].keys():
        found.append("model keys")
    found += [f"model.{k}" for k in ca["model"] if k in cb["model"] and not _same(ca["model"][k], cb["model"][k])]
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    found += [f"optimizer.{k}" for k in sa if k not in sb or not all(_same(v, sb[k].get(n)) for n, v in sa[k].items())]
    if [without_timing(r) for r in read_metrics(a.metrics)] != [without_timing(r) for r in read_metrics(b.metrics)]:
        found.append("metrics.jsonl")
    if not b.final.is_file():
        found.append("final.json missing")
    elif without_timing(json.loads(a.final.read_text())) != without_timing(json.loads(b.final.read_text())):
        found.append("final.json")
    return found


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
