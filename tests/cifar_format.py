"""Write CIFAR-10 / CIFAR-100 folders in the byte-exact format of the official files.

The official batches were pickled by Python 2: every string (dict keys, names, the
array's raw pixels) is a Python-2 `str`, stored with the SHORT_BINSTRING / BINSTRING
opcodes, and arrays name `numpy.core.multiarray._reconstruct`. Loading such a file gives
bytes keys under `encoding="bytes"` and str keys under `encoding="latin1"`. Python 3's
pickler cannot emit those opcodes, so `Py2Pickler` does. `py2=False` writes the other
encoding a user may have: the same dicts re-pickled by Python 3 with str keys.
"""

from __future__ import annotations

import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
CIFAR100_FINE_NAMES = [f"fine_{i:02d}" for i in range(100)]
CIFAR100_COARSE_NAMES = [f"coarse_{i:02d}" for i in range(20)]


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol-2 pickler that writes str and bytes as Python-2 `str` and numpy globals
    under their numpy-1 names, as cPickle did for the official CIFAR files."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: Any) -> None:
        super().__init__(file, protocol=2)

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", "") or ""
        if not module.startswith("numpy"):
            super().save_global(obj, name)
            return
        module = module.replace("numpy._core", "numpy.core")
        name = name or obj.__name__
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))
        self.memoize(obj)


def dump_pickle(obj: Any, path: Path, py2: bool = True) -> Path:
    """Pickle `obj` to `path`: Python-2 format (`py2`) or Python 3's default protocol."""
    path = Path(path)
    with open(path, "wb") as f:
        if py2:
            Py2Pickler(f).dump(obj)
        else:
            pickle.dump(obj, f)
    return path


def planes(image_hwc: np.ndarray) -> np.ndarray:
    """One (32, 32, 3) RGB image as a CIFAR row: red plane, green plane, blue plane."""
    return np.concatenate([image_hwc[:, :, c].ravel() for c in range(3)]).astype(np.uint8)


def _split(
    rng: np.random.Generator, num_classes: int, per_class: int, known_image: np.ndarray | None
) -> tuple[np.ndarray, list[int]]:
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    if known_image is not None and len(labels):
        data[0] = planes(known_image)
    return data, labels.tolist()


def _text(value: str, py2: bool) -> str | bytes:
    return value.encode("latin1") if py2 else value


def write_cifar10(
    root: Path,
    images_per_class_train: int = 5000,
    images_per_class_test: int = 1000,
    seed: int = 0,
    py2: bool = True,
    known_image: np.ndarray | None = None,
) -> Path:
    """Write `root/cifar-10-batches-py` (5 train batches, test batch, meta); return the folder.

    Images are random; `known_image` (32, 32, 3 RGB) becomes image 0 of `data_batch_1`.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data, labels = _split(rng, 10, images_per_class_train, known_image)
    chunks = np.array_split(np.arange(len(labels)), 5)
    for i, idx in enumerate(chunks, start=1):
        _write_cifar10_batch(folder / f"data_batch_{i}", data[idx], [labels[j] for j in idx],
                             f"training batch {i} of 5", py2)
    data, labels = _split(rng, 10, images_per_class_test, None)
    _write_cifar10_batch(folder / "test_batch", data, labels, "testing batch 1 of 1", py2)
    meta = {
        _text("num_cases_per_batch", py2): len(chunks[0]),
        _text("label_names", py2): [_text(n, py2) for n in CIFAR10_NAMES],
        _text("num_vis", py2): 3072,
    }
    dump_pickle(meta, folder / "batches.meta", py2)
    return folder


def _write_cifar10_batch(path: Path, data: np.ndarray, labels: list[int], title: str, py2: bool) -> None:
    batch = {
        _text("batch_label", py2): _text(title, py2),
        _text("labels", py2): labels,
        _text("data", py2): np.ascontiguousarray(data),
        _text("filenames", py2): [_text(f"image_{i:05d}.png", py2) for i in range(len(labels))],
    }
    dump_pickle(batch, path, py2)


def write_cifar100(
    root: Path,
    images_per_class_train: int = 500,
    images_per_class_test: int = 100,
    seed: int = 0,
    py2: bool = True,
    known_image: np.ndarray | None = None,
) -> Path:
    """Write `root/cifar-100-python` (train, test, meta); return the folder.

    Fine label f has coarse label f // 5. `known_image` becomes image 0 of `train`.
    """
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, per_class, known in (
        ("train", images_per_class_train, known_image),
        ("test", images_per_class_test, None),
    ):
        data, fine = _split(rng, 100, per_class, known)
        batch = {
            _text("filenames", py2): [_text(f"image_{i:05d}.png", py2) for i in range(len(fine))],
            _text("batch_label", py2): _text(f"{split}ing batch 1 of 1", py2),
            _text("fine_labels", py2): fine,
            _text("coarse_labels", py2): [f // 5 for f in fine],
            _text("data", py2): data,
        }
        dump_pickle(batch, folder / split, py2)
    meta = {
        _text("fine_label_names", py2): [_text(n, py2) for n in CIFAR100_FINE_NAMES],
        _text("coarse_label_names", py2): [_text(n, py2) for n in CIFAR100_COARSE_NAMES],
    }
    dump_pickle(meta, folder / "meta", py2)
    return folder


def make_tar_gz(folder: Path, archive: Path) -> Path:
    """Pack `folder` into `archive` with the folder's name as the top-level entry."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=Path(folder).name)
    return archive
