"""Saving report files: each PNG (and report.md) is written whole or not at all."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bbn.engine.runs import write_atomically


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
