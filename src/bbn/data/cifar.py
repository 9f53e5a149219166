"""CIFAR-10 / CIFAR-100 from the official python pickle batches (sources "cifar10", "cifar100").

The batches were written by Python 2's cPickle: a dict whose keys are byte strings and
whose `data` is a numpy uint8 array of N x 3072 (the 32x32 red plane, then green, then
blue, row-major). Pickles can run arbitrary code, so they are read with an unpickler that
only admits numpy's array reconstruction, and (for the same dicts re-pickled by Python 3 at
protocol 2) `_codecs.encode(str, "latin1")` and `bytes()` to rebuild byte strings, each
checking its arguments; anything else is refused before it runs.
`data.image_size` is not applied here: CIFAR images stay 32x32 as in the paper.
"""

from __future__ import annotations

import importlib
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from bbn.config import DataConfig
from bbn.data.download import download_and_extract
from bbn.data.registry import IN_MEMORY_READS, SOURCES
from bbn.data.sources import LabeledImages, Splits
from bbn.errors import BBNError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"

# The reference normalises both CIFARs with the CIFAR-10 statistics.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

_PIXELS = 3 * 32 * 32

# Globals a CIFAR pickle may name: numpy's array/scalar/dtype reconstruction, under the
# numpy 1 (`numpy.core`) and numpy 2 (`numpy._core`) module names. `_frombuffer` is what
# numpy emits for arrays re-pickled by Python 3 at protocol 5.
_ALLOWED_GLOBALS = frozenset(
    {("numpy", "ndarray"), ("numpy", "dtype")}
    | {
        (f"numpy.{core}.{module}", name)
        for core in ("core", "_core")
        for module, name in (
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
            ("numeric", "_frombuffer"),
        )
    }
)
_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"


class _RefusedCall(pickle.UnpicklingError):
    """An admitted global called with arguments a CIFAR file never gives it."""


def _latin1_bytes(text: object, encoding: object) -> bytes:
    """`_codecs.encode(text, "latin1")`, the only call Python 3 emits for a bytes object
    at protocol 2 (a batch's raw pixels, its byte-string values); any other argument is
    refused."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _RefusedCall(f"_codecs.encode({type(text).__name__}, {str(encoding)[:40]!r})")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """`bytes()`, what Python 3 emits for b"" at protocol 2; never `bytes(n)` or `bytes(iterable)`."""
    if args:
        raise _RefusedCall(f"bytes() with {len(args)} argument(s)")
    return b""


# How Python 3 pickles bytes at protocols 0-2: the callable rebuilding them, in its
# restricted form (protocol 2 names builtins by their Python 2 module, __builtin__).
_BYTES_GLOBALS = {("_codecs", "encode"): _latin1_bytes, ("__builtin__", "bytes"): _empty_bytes,
                  ("builtins", "bytes"): _empty_bytes}

# What a truncated or foreign file can raise while being unpickled or rebuilt by numpy.
_CORRUPT_PICKLE = (
    EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
    KeyError, struct.error, OverflowError, MemoryError, RecursionError, ImportError,
    SystemError,  # the C unpickler on some corrupt opcode streams
)


@dataclass(frozen=True)
class _Layout:
    """Where one CIFAR variant keeps its files and which keys hold names and labels."""

    folder: str
    archive: str
    train: tuple[str, ...]
    test: str
    meta: str
    names_key: str
    labels_key: str


_CIFAR10 = _Layout(
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test="test_batch",
    meta="batches.meta",
    names_key="label_names",
    labels_key="labels",
)
_CIFAR100 = _Layout(
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    train=("train",),
    test="test",
    meta="meta",
    names_key="fine_label_names",
    labels_key="fine_labels",
)


class _RestrictedUnpickler(pickle.Unpickler):
    """`encoding="bytes"` unpickler that resolves only the numpy globals CIFAR files need,
    and the restricted rebuilding of bytes that Python 3 writes at protocols 0-2."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _BYTES_GLOBALS:
            return _BYTES_GLOBALS[module, name]
        if (module, name) not in _ALLOWED_GLOBALS:
            raise BBNError(
                f"'{self._path}' refuses to load global '{module}.{name}'; the file is not a "
                f"CIFAR batch, replace it with the official one"
            )
        if module.startswith(("numpy.core.", "numpy._core.")):
            module = f"{_NUMPY_CORE}.{module.rsplit('.', 1)[1]}"
        return getattr(importlib.import_module(module), name)


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys, loaded without running foreign code."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except OSError as exc:
        raise BBNError(f"cannot read '{path}': {exc.strerror}; check the file and its permissions") from None
    except _RefusedCall as exc:
        raise BBNError(f"'{path}' refuses to call {exc}; the file is not a CIFAR batch, replace it with the "
                       "official one") from None
    except _CORRUPT_PICKLE:
        raise BBNError(f"'{path}' is truncated or not a CIFAR pickle; re-download it") from None
    if not isinstance(obj, dict):
        raise BBNError(
            f"'{path}' holds a {type(obj).__name__}, not a CIFAR dict; re-download it"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _entry(batch: dict[str, Any], key: str, path: Path) -> Any:
    if key not in batch:
        keys = ", ".join(sorted(batch)) or "none"
        raise BBNError(
            f"'{path}' has no '{key}' entry (it has: {keys}); it is not a CIFAR file of this "
            f"kind, re-download it"
        )
    return batch[key]


def _class_names(meta: dict[str, Any], key: str, path: Path) -> list[str]:
    names = _entry(meta, key, path)
    if not isinstance(names, (list, tuple)) or not names or not all(
        isinstance(n, (str, bytes)) for n in names
    ):
        raise BBNError(f"'{path}': '{key}' is not a non-empty list of names; re-download it")
    return [n.decode("utf-8", errors="replace") if isinstance(n, bytes) else n for n in names]


def _images(batch: dict[str, Any], path: Path) -> np.ndarray:
    """`data` as a uint8 array of N x 3072."""
    data = _entry(batch, "data", path)
    if not isinstance(data, np.ndarray):
        try:
            data = np.asarray(data)
        except (ValueError, TypeError):
            raise BBNError(f"'{path}': 'data' is not an array of pixels; re-download it") from None
    if data.ndim != 2 or data.shape[1] != _PIXELS:
        raise BBNError(
            f"'{path}': 'data' has shape {tuple(data.shape)}, expected N x {_PIXELS} "
            f"(32x32 red, green, blue planes); re-download it"
        )
    if data.dtype != np.uint8:
        in_range = data.dtype.kind in "iu" and (
            data.size == 0 or (int(data.min()) >= 0 and int(data.max()) <= 255)
        )
        if not in_range:
            raise BBNError(f"'{path}': 'data' holds {data.dtype} values, not 0..255 pixels; re-download it")
        data = data.astype(np.uint8)
    return data


def _labels(batch: dict[str, Any], key: str, count: int, path: Path, num_classes: int) -> np.ndarray:
    """`labels` / `fine_labels` as int64, one per image, each in [0, num_classes)."""
    raw = _entry(batch, key, path)
    not_ints = BBNError(f"'{path}': '{key}' is not a list of integer labels; re-download it")
    try:
        labels = np.asarray(raw)
    except (ValueError, TypeError, OverflowError):
        raise not_ints from None
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise not_ints
    if labels.size != count:
        raise BBNError(
            f"'{path}' has {labels.size} labels for {count} images; the file is corrupt, re-download it"
        )
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise BBNError(
            f"'{path}': label {int(bad[0])} is outside [0, {num_classes}) for the {num_classes} "
            f"class names; the file is corrupt, re-download it"
        )
    return labels.astype(np.int64)


def _read_split(paths: list[Path], layout: _Layout, names: list[str]) -> LabeledImages:
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for path in paths:
        batch = read_cifar_pickle(path)
        data = _images(batch, path)
        images.append(data)
        labels.append(_labels(batch, layout.labels_key, len(data), path, len(names)))
    # concatenate copies: the result is writable and independent of the pickled buffers.
    pixels = np.concatenate(images).reshape(-1, 3, 32, 32)
    return LabeledImages(torch.from_numpy(pixels), torch.from_numpy(np.concatenate(labels)), names)


def _find_folder(root: Path, layout: _Layout) -> Path | None:
    """`root/<folder>` if present, else `root` itself when it is (or holds) the batches."""
    if (root / layout.folder).is_dir():
        return root / layout.folder
    if root.is_dir() and (root.name == layout.folder or (root / layout.meta).is_file()):
        return root
    return None


def _missing(folder: Path | None, layout: _Layout) -> list[Path]:
    if folder is None:
        return []
    files = [layout.meta, *layout.train, layout.test]
    return [folder / f for f in files if not (folder / f).is_file()]


def _locate(cfg: DataConfig, layout: _Layout, url: str, md5: str) -> Path:
    """The folder holding all of this layout's files, downloading them if allowed and needed."""
    if not cfg.root:
        how = (
            "data.download=true needs a folder to download into, set data.root"
            if cfg.download
            else f"point it at the folder holding {layout.folder}, or set data.root to a folder "
            f"and data.download=true"
        )
        raise BBNError(f"data.root is not set; {how}")
    root = Path(cfg.root).expanduser()
    folder = _find_folder(root, layout)
    if cfg.download and (folder is None or _missing(folder, layout)):
        into = root.parent if root.name == layout.folder else root
        download_and_extract(url, into, layout.archive, md5)
        folder = _find_folder(root, layout)
    if not root.exists():
        raise BBNError(
            f"data.root '{root}' does not exist; point it at the folder holding {layout.folder}, "
            f"or set data.download=true to fetch it there"
        )
    if folder is None:
        raise BBNError(
            f"'{root / layout.folder}' not found; point data.root at the folder holding "
            f"{layout.folder}, or set data.download=true to fetch it"
        )
    missing = _missing(folder, layout)
    if missing:
        raise BBNError(
            f"'{missing[0]}' not found; the {layout.folder} folder is incomplete, extract "
            f"{layout.archive} again or set data.download=true"
        )
    return folder


def _load(cfg: DataConfig, layout: _Layout, url: str, md5: str) -> Splits:
    folder = _locate(cfg, layout, url, md5)
    meta_path = folder / layout.meta
    names = _class_names(read_cifar_pickle(meta_path), layout.names_key, meta_path)
    return Splits(
        train=_read_split([folder / f for f in layout.train], layout, names),
        test=_read_split([folder / layout.test], layout, list(names)),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )


@SOURCES.register("cifar10", reads={"data.root", "data.download", *IN_MEMORY_READS})
def load_cifar10(cfg: DataConfig) -> Splits:
    """CIFAR-10: 50,000 train / 10,000 test images from `cifar-10-batches-py` under `cfg.root`."""
    return _load(cfg, _CIFAR10, CIFAR10_URL, CIFAR10_MD5)


@SOURCES.register("cifar100", reads={"data.root", "data.download", *IN_MEMORY_READS})
def load_cifar100(cfg: DataConfig) -> Splits:
    """CIFAR-100 (fine labels): 50,000 train / 10,000 test from `cifar-100-python` under `cfg.root`."""
    return _load(cfg, _CIFAR100, CIFAR100_URL, CIFAR100_MD5)
