"""Run `bbn train` processes that stop themselves at named fault points (bbn.engine.faults) and
compare what their resumes leave with an uninterrupted run (used by tests/test_kill.py and
benchmarks/kill_test.py).

Two ways to start a process: `FreshProcesses` runs `python -m bbn train ...` as a user would;
`ForkServer` runs `bbn.cli.main([...])` in a process forked from a server that has imported
the package once, so each start skips the interpreter's seconds of imports (the short test).
Either way every run is its own OS process and receives real signals. Nothing here waits for
a moment: a process is waited for until it exits (or stops itself at a fault point).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from bbn.engine.checkpoint import load_checkpoint
from bbn.engine.runs import RunDir, read_metrics

TIMING_KEYS = frozenset({"epoch_s", "images_per_s", "train_s"})


def train_args(items: list[str], out: Path) -> list[str]:
    """`train ITEMS --out OUT --resume auto`: starts, continues or reuses the run in OUT."""
    return ["train", *items, "--no-progress", "--out", str(out), "--resume", "auto"]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore", **(extra or {})}


class Launcher(Protocol):
    def start(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> int:
        """Start `bbn ARGS` (with `env` added to the environment), stdout and stderr to `log`; its pid."""

    def poll(self, pid: int) -> int | None:
        """Its exit code (minus the signal number if a signal ended it), None while it runs."""

    def wait(self, pid: int, stopped: bool = False) -> int | None:
        """Block until it exits (its exit code), or with `stopped` until it stops (None) or exits."""


class FreshProcesses:
    """`python -m bbn ARGS` in a new interpreter per run."""

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> int:
        with log.open("w") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "bbn", *args], stdout=sink, stderr=subprocess.STDOUT,
                                    env=_env(env))
        self.procs[proc.pid] = proc
        return proc.pid

    def poll(self, pid: int) -> int | None:
        return self.procs[pid].poll()

    def wait(self, pid: int, stopped: bool = False) -> int | None:
        if stopped:
            return _waitpid(pid, True)
        return self.procs[pid].wait()

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _waitpid(pid: int, stopped: bool) -> int | None:
    """os.waitpid: the exit code, or None when the process stopped (with `stopped`)."""
    _, status = os.waitpid(pid, os.WUNTRACED if stopped else 0)
    return None if os.WIFSTOPPED(status) else os.waitstatus_to_exitcode(status)


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

    def start(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> int:
        return self._ask({"start": args, "log": str(log), "env": env or {}})["pid"]

    def poll(self, pid: int) -> int | None:
        return self._ask({"poll": pid})["returncode"]

    def wait(self, pid: int, stopped: bool = False) -> int | None:
        return self._ask({"wait": pid, "stopped": stopped})["returncode"]

    def close(self) -> None:
        if self.server.poll() is None:
            assert self.server.stdin is not None
            self.server.stdin.close()
            self.server.wait(timeout=60)


def _serve() -> None:
    """The fork server's loop: one JSON request per line on stdin, one answer per line."""
    import sklearn.datasets  # noqa: F401  (the imports a run needs, done once: the digits,
    import bbn.cli  # the training loop and the report's plots)
    import bbn.data.prepare  # noqa: F401
    import bbn.tools.report  # noqa: F401
    import bbn.engine.train  # noqa: F401

    answer = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        if "start" in request:
            fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # exists on reply
            pid = os.fork()
            if pid == 0:
                os.environ.update(request["env"])
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
        elif "wait" in request:
            reply = {"returncode": _waitpid(request["wait"], request["stopped"])}
        else:
            pid, status = os.waitpid(request["poll"], os.WNOHANG)
            reply = {"returncode": None if pid == 0 else os.waitstatus_to_exitcode(status)}
        answer.write(json.dumps(reply) + "\n")
        answer.flush()


@dataclass
class Attempt:
    """One process: the fault point armed (None: none), its exit code, the fault points it
    hit in order, and what it printed."""

    fault: str | None
    returncode: int
    points: list[str]
    output: str


def run_once(launcher: Launcher, args: list[str], log: Path, fault: str | None = None) -> Attempt:
    """Run `bbn ARGS` to its end with fault point `fault` (`<point>:<n>[:<action>]`, see
    bbn.engine.faults) armed, recording the points it hits in LOG.points."""
    points = log.with_suffix(".points")
    points.unlink(missing_ok=True)
    env = {"BBN_FAULT_LOG": str(points), **({"BBN_FAULT": fault} if fault else {})}
    code = launcher.wait(launcher.start(args, log, env))
    assert code is not None
    hit = points.read_text().splitlines() if points.is_file() else []
    return Attempt(fault, code, hit, log.read_text())


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
