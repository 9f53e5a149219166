"""Named fault points: places in the run-folder protocol where a test can stop `bbn train` by
progress instead of by elapsed time.

`BBN_FAULT=<point>:<n>[:<action>]` arms one point: at its n-th hit in this process the
process acts on itself, `kill` (SIGKILL, the default), `term` (SIGTERM: a stop request) or
`stop` (SIGSTOP: it waits, frozen, for the test to act). `BBN_FAULT_LOG=FILE` appends the
name of every point hit to FILE before acting, so a test can assert where a process was.
With neither variable set a fault point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "BBN_FAULT"
LOG_ENV = "BBN_FAULT_LOG"
ACTIONS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "stop": signal.SIGSTOP}

# Every point, in the order a run first reaches them (README, Reliability).
POINTS = (
    "run.created",              # config.yaml written, the folder locked; nothing trained yet
    "train.step",               # after each optimiser step, before the stop-request check
    "train.evaluated",          # an epoch trained and evaluated; nothing of it written yet
    "checkpoint.temp_written",  # the new checkpoint complete in its temporary file, not renamed
    "train.last_written",       # last.pt holds the epoch; best.pt and metrics.jsonl not yet
    "train.best_written",       # best.pt written (when the epoch is the best); metrics.jsonl not yet
    "train.metrics_written",    # metrics.jsonl written: the epoch is complete on disk
    "checkpoint.previous_kept", # (from epoch 2) last.pt linked as last.prev.pt, the new one not yet written
    "finish.evaluated",         # final evaluation done; report and final.json not yet written
    "finish.report_written",    # report.md and plots written; final.json not yet
)
_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Count a hit of point `name`; log it and act when `BBN_FAULT` arms it for this hit."""
    armed, log = os.environ.get(FAULT_ENV), os.environ.get(LOG_ENV)
    if not armed and not log:
        return
    _hits[name] = count = _hits.get(name, 0) + 1
    if log:
        with open(log, "a") as f:
            f.write(f"{name}\n")
    if armed:
        point, n, action = (armed.split(":") + ["kill"])[:3]
        if point == name and int(n) == count:
            os.kill(os.getpid(), ACTIONS[action])
