"""The one error type users see: a one-line message that names the problem and the fix."""

from __future__ import annotations

import reprlib

# A message stays a line: a longer one keeps its head and its end (the fix).
MAX_MESSAGE = 4000

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 8, 8, 8, 8
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 100


def quote(value: object, limit: int = 80) -> str:
    """A user's value as a message quotes it: a str as it is, anything else as its repr,
    at most `limit` characters. The repr is built with reprlib's bounds (a few items per
    level, a few levels), so a huge or deeply shared value costs no more than a small one."""
    text = value[: limit + 1] if isinstance(value, str) else _REPR.repr(value)
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


class BBNError(Exception):
    """Bad input (data, config, paths). The CLI prints it on one line and exits with code 2."""

    def __init__(self, message: object = "") -> None:
        # One line whatever it quotes: a key, a value or a file name may hold a line break.
        text = str(message).replace("\r", "\\r").replace("\n", "\\n")
        if len(text) > MAX_MESSAGE:
            text = text[: MAX_MESSAGE * 3 // 4] + " ... " + text[-(MAX_MESSAGE // 4):]
        super().__init__(text)


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
