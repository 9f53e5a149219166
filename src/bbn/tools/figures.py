"""Saving report files: each PNG (and report.md) is written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bbn.engine.runs import publish


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """`write(f)` into a temporary file in `path`'s folder, fsync it and rename it over
    `path`. A failure (a full disk, say) leaves the old file, or none, and no temporary file."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_png(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Render a standalone figure to `path` atomically (`write_atomically`), then drop it."""
    FigureCanvasAgg(fig)
    fig.tight_layout()
    try:
        return write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        fig.clear()


def write_text_file(path: Path, text: str) -> Path:
    """UTF-8 text written atomically (`write_atomically`)."""
    return write_atomically(path, lambda f: f.write(text.encode("utf-8")))
