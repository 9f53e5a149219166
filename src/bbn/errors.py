"""The one error type users see: a one-line message that names the problem and the fix."""

from __future__ import annotations


class BBNError(Exception):
    """Bad input (data, config, paths). The CLI prints it on one line and exits with code 2."""

    def __init__(self, message: object = "") -> None:
        # One line whatever it quotes: a key, a value or a file name may hold a line break.
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


def first_line(exc: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message (its type when empty), at most `limit`
    characters, cut between words and marked with "…": how a library error is quoted inside
    a one-line BBNError."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0] if " " in line[:limit] else line[:limit - 1]
    return cut.rstrip(" ,;:") + "…"


class Preempted(Exception):
    """Training stopped on SIGTERM or SIGINT after writing checkpoints/last.pt; the message
    names the point and how to continue. The CLI prints it and exits with EXIT_PREEMPTED."""


EXIT_BAD_INPUT = 2
# sysexits' EX_TEMPFAIL: a temporary failure, the same command may be retried. `bbn train
# --resume RUN` (or the first command plus `--resume auto`) then continues where it stopped.
EXIT_PREEMPTED = 75
