"""The user's own arrays from one .npz file (source "arrays", `data.root` = the file).

Keys: `x_train`, `y_train`, `x_test`, `y_test` and optionally `class_names`. Images are
uint8 (0..255), other integers within 0..255, or floats in [0, 1] (scaled to uint8), laid
out (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3 and H, W >= 4. Labels are
integers in [0, C); without `class_names` the classes are 0..max label, named by number.
The file is read with `allow_pickle=False`, so an object array (pickled data, which could
run code) is refused before anything in it is loaded. Every problem is a one-line
`BBNError` that names the file, the key and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bbn.config import DataConfig
from bbn.data.registry import IN_MEMORY_READS, SOURCES
from bbn.data.sources import LabeledImages, Splits
from bbn.errors import BBNError, first_line
from bbn.registry import closest

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
NAMES_KEY = "class_names"
CHANNELS = (1, 3)
MIN_SIDE = 4
_SAVE_HINT = "save it with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The required arrays (and `class_names` when present), without unpickling anything."""
    if path.is_dir():
        raise BBNError(f"data.root '{path}' is a folder; point it at the .npz file itself")
    if not path.is_file():
        raise BBNError(f"data.root '{path}' not found; point it at an .npz file ({_SAVE_HINT})")
    try:
        archive = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise BBNError(f"cannot read '{path}': {exc.strerror or first_line(exc)}; check the file and its "
                       "permissions") from None
    except Exception as exc:  # numpy raises many types for foreign or truncated files
        reason = "it holds pickled data, which is never loaded" if "pickle" in str(exc) else first_line(exc)
        raise BBNError(f"'{path}' is not an .npz archive ({reason}); {_SAVE_HINT}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise BBNError(f"'{path}' holds a single array, not an .npz archive of named arrays; {_SAVE_HINT}")
    with archive:
        keys = list(archive.files)
        for key in REQUIRED_KEYS:
            if key not in keys:
                hint = closest(key, [k for k in keys if k not in REQUIRED_KEYS])  # a misspelt one
                has = f"did you mean '{hint}'?" if hint else f"it has: {', '.join(keys) or 'nothing'}"
                raise BBNError(f"'{path}' has no '{key}' array ({has}); {_SAVE_HINT}")
        wanted = [*REQUIRED_KEYS, *([NAMES_KEY] if NAMES_KEY in keys else [])]
        return {key: _member(archive, key, path) for key in wanted}


def _member(archive: Any, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(archive[key])
    except ValueError as exc:
        if "pickle" in str(exc):
            raise BBNError(f"'{path}': '{key}' is an object array (pickled data) and is refused; save plain "
                           "number arrays, and class_names as numpy.array(names, dtype=str)") from None
        raise BBNError(f"'{path}': '{key}' cannot be read ({first_line(exc)}); the file is corrupt, "
                       f"{_SAVE_HINT}") from None
    except Exception as exc:  # a damaged zip member: zlib, zipfile, EOF, ...
        raise BBNError(f"'{path}': '{key}' cannot be read ({first_line(exc)}); the file is corrupt, "
                       f"{_SAVE_HINT}") from None


def to_nchw_uint8(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    """Images as uint8 (N, C, H, W), checking dtype, layout, finiteness and range."""
    layouts = f"images must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {CHANNELS} and H, W >= {MIN_SIDE}"
    if x.dtype.kind not in "uif":
        raise BBNError(f"'{path}': '{key}' holds {x.dtype} values; save images as uint8 0..255 or floats in [0, 1]")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in CHANNELS and x.shape[1] >= MIN_SIDE:
        x = x.transpose(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in CHANNELS):
        raise BBNError(f"'{path}': '{key}' has shape {tuple(x.shape)}; {layouts}")
    if min(x.shape[2:]) < MIN_SIDE:
        raise BBNError(f"'{path}': '{key}' has shape {tuple(x.shape)}; {layouts}")
    if x.shape[0] == 0:
        raise BBNError(f"'{path}': '{key}' holds no images; give at least one image per class")
    if x.dtype.kind == "f":
        finite = np.isfinite(x)
        if not finite.all():
            at = np.argwhere(~finite)[0]
            kind = "a NaN" if np.isnan(x[tuple(at)]) else "an infinite"
            raise BBNError(f"'{path}': '{key}' has {kind} pixel in image {int(at[0])}; replace NaN and inf "
                           "pixels (e.g. numpy.nan_to_num) before saving")
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            raise BBNError(f"'{path}': '{key}' holds float pixels outside [0, 1] (min {low:g}, max {high:g}); "
                           "scale floats to [0, 1] or save uint8 0..255")
        x = np.round(x.astype(np.float32) * 255.0)
    elif x.dtype != np.uint8:
        low, high = int(x.min()), int(x.max())
        if low < 0 or high > 255:
            raise BBNError(f"'{path}': '{key}' holds integer pixels outside 0..255 (min {low}, max {high}); "
                           "save uint8 0..255 or floats in [0, 1]")
    return np.ascontiguousarray(x, dtype=np.uint8)


def to_labels(y: np.ndarray, key: str, count: int, x_key: str, path: Path) -> np.ndarray:
    """Labels as int64 (N,), one per image, none negative."""
    if y.dtype.kind not in "iu":
        raise BBNError(f"'{path}': '{key}' holds {y.dtype} values; labels must be integers 0..C-1 "
                       "(save y.astype(numpy.int64))")
    if y.ndim != 1:
        raise BBNError(f"'{path}': '{key}' has shape {tuple(y.shape)}; labels must be 1-D (save y.ravel())")
    if y.size != count:
        raise BBNError(f"'{path}': '{key}' has {y.size} labels for {count} images in '{x_key}'; give one "
                       "label per image")
    if y.dtype.kind == "i" and y.size and int(y.min()) < 0:
        at = int(np.argmax(y < 0))
        raise BBNError(f"'{path}': '{key}' has label {int(y[at])} (image {at}); labels must be 0..C-1")
    if y.dtype.kind == "u" and y.size and int(y.max()) > np.iinfo(np.int64).max:
        raise BBNError(f"'{path}': '{key}' has label {int(y.max())}; labels must be 0..C-1")
    return y.astype(np.int64)


def to_class_names(names: np.ndarray, path: Path) -> list[str]:
    """`class_names` as a list of distinct, non-empty strings."""
    if names.dtype.kind not in "US" or names.ndim != 1 or names.size == 0:
        raise BBNError(f"'{path}': '{NAMES_KEY}' is {names.dtype} {tuple(names.shape)}, not a non-empty 1-D "
                       "string array; save numpy.array(names, dtype=str)")
    out = [n.decode("utf-8", errors="replace") if isinstance(n, bytes) else str(n) for n in names.tolist()]
    seen: set[str] = set()
    for i, name in enumerate(out):
        if not name.strip():
            raise BBNError(f"'{path}': '{NAMES_KEY}' entry {i} is empty; give every class a name")
        if name in seen:
            raise BBNError(f"'{path}': '{NAMES_KEY}' lists '{name}' twice; give each class one distinct name")
        seen.add(name)
    return out


def _check_range(y: np.ndarray, key: str, num_classes: int, path: Path) -> None:
    if y.size and int(y.max()) >= num_classes:
        at = int(np.argmax(y >= num_classes))
        raise BBNError(f"'{path}': '{key}' has label {int(y[at])} (image {at}) but '{NAMES_KEY}' lists "
                       f"{num_classes} classes; fix the label or add the class name")


def _stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the 0..1 scale (std kept above one grey level)."""
    mean, std = [], []
    for c in range(x.shape[1]):
        plane = x[:, c].astype(np.float64) / 255.0
        mean.append(float(plane.mean()))
        std.append(max(float(plane.std()), 1.0 / 255.0))
    return tuple(mean), tuple(std)


def load_arrays_file(path: str | Path, image_size: int | None = None) -> Splits:
    """Train and test splits from an .npz file; normalisation from the training images.

    Both splits must share the channel count, and the image size unless `image_size`
    (data.image_size) resizes them to one.
    """
    path = Path(path).expanduser()
    raw = read_npz(path)
    x_train = to_nchw_uint8(raw["x_train"], "x_train", path)
    x_test = to_nchw_uint8(raw["x_test"], "x_test", path)
    if x_train.shape[1] != x_test.shape[1]:
        raise BBNError(f"'{path}': 'x_train' has {x_train.shape[1]} channel(s) but 'x_test' has "
                       f"{x_test.shape[1]}; save both splits with the same channels")
    if image_size is None and x_train.shape[2:] != x_test.shape[2:]:
        raise BBNError(f"'{path}': 'x_train' images are {x_train.shape[2]}x{x_train.shape[3]} but 'x_test' "
                       f"images are {x_test.shape[2]}x{x_test.shape[3]}; save one size or set data.image_size")
    y_train = to_labels(raw["y_train"], "y_train", len(x_train), "x_train", path)
    y_test = to_labels(raw["y_test"], "y_test", len(x_test), "x_test", path)
    if NAMES_KEY in raw:
        names = to_class_names(raw[NAMES_KEY], path)
    else:
        top = int(max(y_train.max(), y_test.max(initial=0)))
        if top >= len(y_train):  # more classes than training images: some class would be empty
            key = "y_train" if y_train.max() == top else "y_test"
            raise BBNError(f"'{path}': '{key}' has label {top}, more classes than the {len(y_train)} training "
                           "images; number the classes 0..C-1, or save class_names")
        names = [str(c) for c in range(top + 1)]
    _check_range(y_train, "y_train", len(names), path)
    _check_range(y_test, "y_test", len(names), path)
    mean, std = _stats(x_train)
    return Splits(
        train=LabeledImages(torch.from_numpy(x_train), torch.from_numpy(y_train), names),
        test=LabeledImages(torch.from_numpy(x_test), torch.from_numpy(y_test), list(names)),
        mean=mean,
        std=std,
    )


@SOURCES.register("arrays", reads={"data.root", *IN_MEMORY_READS})
def load_arrays(cfg: DataConfig) -> Splits:
    """The user's arrays: `data.root` is an .npz file with x_train, y_train, x_test, y_test."""
    if not cfg.root:
        raise BBNError("data.root is not set; point it at an .npz file with x_train, y_train, x_test, y_test")
    return load_arrays_file(cfg.root, cfg.image_size)
