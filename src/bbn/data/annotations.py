"""What the file sources share: finding annotation files and the folder image paths start
from, refusing data keys a source does not read, and noticing a wrong root at once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bbn.config import DataConfig
from bbn.data.files import ImageFiles, PathTable
from bbn.errors import BBNError


def check_some_exist(files: ImageFiles, what: str, fix: str, samples: int = 16) -> None:
    """Fail when none of a few evenly spaced images exists: a wrong root, not bad images."""
    if not len(files):
        return
    picks = sorted({int(i) for i in np.linspace(0, len(files) - 1, min(samples, len(files)))})
    if not any(os.path.isfile(files.paths[i]) for i in picks):
        raise BBNError(f"none of {len(picks)} sampled images of {what} exists (e.g. {files.where(picks[0])}); {fix}")


def check_unused(cfg: DataConfig, source: str, keys: Sequence[str]) -> None:
    """Refuse data keys the source does not read, so a misplaced setting is not ignored."""
    for key in keys:
        value = getattr(cfg, key)
        if value not in (None, False):
            raise BBNError(f"data.{key} is not used by source '{source}'; remove it")


def resolve_file(value: str | None, key: str, cfg: DataConfig, what: str) -> Path:
    """data.train_file / data.test_file: a path as given, else relative to data.root."""
    if not value:
        raise BBNError(f"data.{key} is not set; point it at {what}")
    path = Path(value).expanduser()
    if not path.is_file() and not path.is_absolute() and cfg.root:
        under_root = Path(cfg.root).expanduser() / path
        path = under_root if under_root.is_file() else path
    if not path.is_file():
        raise BBNError(f"data.{key} '{value}' not found; point it at {what}")
    return path


def listed_files(cfg: DataConfig, annotation: Path, rels: Sequence[str], labels: Sequence[int],
                 entries: Sequence[int], names: list[str], entry: str, fix: str) -> ImageFiles:
    """The images an annotation file lists (paths relative to `image_root`), each with the
    entry it came from (`entry`: a format with {} for it); fails at once when none of a few
    sampled images exists (`fix`: what to do then)."""
    root = image_root(cfg, annotation)
    files = ImageFiles(PathTable.from_strings([os.path.join(root, rel) for rel in rels]),
                       torch.tensor(list(labels), dtype=torch.int64), list(names),
                       np.array(list(entries), dtype=np.int64), entry)
    check_some_exist(files, f"'{annotation}'", fix)
    return files


def image_root(cfg: DataConfig, annotation: Path) -> Path:
    """The folder relative image paths start from: data.root, else the annotation file's folder."""
    if not cfg.root:
        return annotation.parent
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise BBNError(f"data.root '{cfg.root}' is not a folder; point it at the folder the image paths start from")
    return root
