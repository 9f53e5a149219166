"""Checks shared by the command-line tests."""

from __future__ import annotations

import pytest

from bbn.cli import main
from bbn.errors import EXIT_BAD_INPUT


def assert_bad_input(args: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    """`bbn ARGS` fails with exit code 2 and one line on stderr, no traceback, naming `words`."""
    code = main(args)
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bbn: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]
