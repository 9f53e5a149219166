"""Config -> the long-tailed training set, the test set and the normalisation to use."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from bbn.config import Config, DataConfig
from bbn.data.annotations import check_unused
from bbn.data.longtail import check_trainable, first_per_class, hold_out, make_longtail
from bbn.data.sources import LabeledImages, Splits, load_source
from bbn.errors import BBNError


def resize(data: LabeledImages, size: int) -> LabeledImages:
    """Bilinear resize of every image to size x size, kept as uint8."""
    if tuple(data.images.shape[2:]) == (size, size):
        return data
    images = F.interpolate(data.images.float(), size=(size, size), mode="bilinear", align_corners=False)
    return replace(data, images=images.round().clamp(0, 255).to(torch.uint8))


PATH_KEYS = ("root", "train_file", "test_file", "test_root")
_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def path_problem(path: Path) -> str | None:
    """What makes an existing `path` unusable as data (a symbolic-link loop, a dangling link,
    a pipe or device, no access), or None: a regular file, a folder, or nothing there (which
    the source reports as not found)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"is a symbolic link to '{os.readlink(path)}', which does not exist" if path.is_symlink() else None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return f"cannot be accessed ({exc.strerror})"
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return f"is {kind}, not a regular file or folder"


def check_paths(cfg: DataConfig) -> None:
    """Refuse a data path that exists but is no file or folder, naming what it is."""
    for key in PATH_KEYS:
        value = getattr(cfg, key)
        problem = path_problem(Path(value).expanduser()) if value else None
        if problem:
            raise BBNError(f"data.{key} '{value}' {problem}; point it at the dataset's folder or file")


def prepare_data(cfg: Config) -> Splits:
    """Load the source, cut the long tail (SPEC §4), hold the validation split out of it
    (data.val_per_class) and check every class can be trained."""
    check_paths(cfg.data)
    splits = load_source(cfg.data)
    train, test = splits.train, splits.test
    if isinstance(train, LabeledImages):  # keys only image-file sources read: refuse, never ignore
        check_unused(cfg.data, cfg.data.source, ("train_file", "test_file", "test_root", "resize_size"))
    for split, part in (("training", train), ("test", test)):
        if len(part) == 0:
            raise BBNError(f"data source '{cfg.data.source}' has no {split} images; check data.root and its files")
    if cfg.data.profile != "none" or cfg.data.imbalance_ratio != 1 or cfg.data.n_max is not None:
        train = make_longtail(train, cfg.data.imbalance_ratio, cfg.data.profile, cfg.data.subset_seed,
                              cfg.data.n_max)
    if cfg.data.test_max_per_class is not None:
        test = first_per_class(test, cfg.data.test_max_per_class)
    if cfg.data.image_size is not None and isinstance(train, LabeledImages):  # files: the crop size
        train, test = resize(train, cfg.data.image_size), resize(test, cfg.data.image_size)
    check_trainable(train.class_counts(), train.class_names)
    val = None
    if cfg.data.val_per_class:
        train, val = hold_out(train, cfg.data.val_per_class, cfg.data.subset_seed)
    channels = train.channels
    mean = tuple(cfg.augment.mean) if cfg.augment.mean is not None else splits.mean
    std = tuple(cfg.augment.std) if cfg.augment.std is not None else splits.std
    for key, vals in (("augment.mean", mean), ("augment.std", std)):
        if len(vals) != channels:
            raise BBNError(f"{key} has {len(vals)} values but the images have {channels} channel(s); give {channels}")
    return Splits(train, test, mean, std, val)
