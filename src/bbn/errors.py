"""The one error type users see: a one-line message that names the problem and the fix."""

from __future__ import annotations


class BBNError(Exception):
    """Bad input (data, config, paths). The CLI prints it on one line and exits with code 2."""


EXIT_BAD_INPUT = 2
