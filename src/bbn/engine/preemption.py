"""Stop requests during training: the first SIGTERM or SIGINT is noted and honoured by the
trainer at the next step boundary (it writes last.pt and raises `Preempted`); the handlers
are then the previous ones again, so a second signal acts at once."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: int | None = None
_active = False


def requested() -> int | None:
    """The signal number of a pending stop request, or None."""
    return _requested


@contextmanager
def stop_requests() -> Iterator[None]:
    """Turn SIGTERM / SIGINT into stop requests inside the block. Inside another such block
    it changes nothing (a request noted before stays pending); outside the main thread too,
    since signal handlers can be set nowhere else."""
    global _requested, _active
    if _active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def note(signum: int, _frame: object) -> None:
        global _requested
        _requested = signum
        restore()

    _requested, _active = None, True
    for sig in STOP_SIGNALS:
        signal.signal(sig, note)
    try:
        yield
    finally:
        restore()
        _requested, _active = None, False
