"""Image folders (source "image_folder"): `data.root` holds one subfolder of images per class
(the class names, in sorted order, are the labels 0..C-1; images in nested folders count).

The test split is `data.test_root`, a tree with the same class subfolders, or, when it is
unset, `data.test_per_class` images of every class held out with a seeded per-class shuffle
(`data.subset_seed`), as for digits. The long tail (`data.profile`, `data.imbalance_ratio`)
is then cut from the training images like any source's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from bbn.config import DataConfig
from bbn.data.annotations import check_unused
from bbn.data.files import ImageFiles, PathTable
from bbn.data.registry import FILE_READS, SOURCES
from bbn.data.sources import Splits, shuffled_per_class
from bbn.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from bbn.errors import BBNError

# The extensions torchvision's ImageFolder accepts.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def class_folders(root: Path, key: str) -> list[str]:
    """The sorted names of `root`'s class subfolders."""
    if not root.is_dir():
        raise BBNError(f"data.{key} '{root}' is not a folder; point it at a folder with one subfolder of images "
                       "per class")
    names = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise BBNError(f"data.{key} '{root}' has no class subfolders; an image folder holds one subfolder of "
                       "images per class")
    return names


def images_in(folder: Path) -> list[str]:
    """Image files under `folder` (recursively, following links), sorted by path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(os.path.join(dirpath, f) for f in filenames
                     if not f.startswith(".") and f.lower().endswith(IMG_EXTENSIONS))
    return sorted(found)


def scan(root: Path, key: str, classes: list[str]) -> ImageFiles:
    """The images of `root`'s class subfolders, labelled by their position in `classes`."""
    paths: list[str] = []
    labels: list[int] = []
    position = {name: c for c, name in enumerate(classes)}
    for name in class_folders(root, key):
        if name not in position:
            raise BBNError(f"data.{key} '{root}' has a class folder '{name}' that the training folder lacks; "
                           "use the same class subfolders in both")
        found = images_in(root / name)
        paths.extend(found)
        labels.extend([position[name]] * len(found))
    if not paths:
        raise BBNError(f"data.{key} '{root}' holds no images ({', '.join(IMG_EXTENSIONS)}) in its class subfolders")
    return ImageFiles(PathTable.from_strings(paths), torch.tensor(labels, dtype=torch.int64), list(classes),
                      np.zeros(len(paths), dtype=np.int64))


def hold_out(files: ImageFiles, per_class: int, seed: int) -> tuple[ImageFiles, ImageFiles]:
    """(training pool, test split): `per_class` images of each class, after a seeded per-class shuffle."""
    counts = files.class_counts()
    small = min(range(files.num_classes), key=counts.__getitem__)
    if counts[small] <= per_class:
        raise BBNError(f"class '{files.class_names[small]}' has {counts[small]} images, too few to hold out "
                       f"data.test_per_class={per_class} for testing and train on the rest; lower "
                       "data.test_per_class or give a test folder in data.test_root")
    is_test = np.zeros(len(files), dtype=bool)
    for idx in shuffled_per_class(files.labels.numpy(), files.num_classes, seed):
        is_test[idx[:per_class]] = True
    return files.subset(np.flatnonzero(~is_test).tolist()), files.subset(np.flatnonzero(is_test).tolist())


@SOURCES.register("image_folder", reads={"data.test_root", "data.test_per_class", *FILE_READS})
def load_image_folder(cfg: DataConfig) -> Splits:
    """Train and test splits of an image folder tree."""
    check_unused(cfg, cfg.source, ("train_file", "test_file", "download"))
    if not cfg.root:
        raise BBNError("data.root is not set; pass data.root=FOLDER, a folder with one subfolder of images per class")
    root = Path(cfg.root).expanduser()
    classes = class_folders(root, "root")
    everything = scan(root, "root", classes)
    if cfg.test_root:
        return Splits(everything, scan(Path(cfg.test_root).expanduser(), "test_root", classes),
                      IMAGENET_MEAN, IMAGENET_STD)
    train, test = hold_out(everything, cfg.test_per_class, cfg.subset_seed)
    return Splits(train, test, IMAGENET_MEAN, IMAGENET_STD)
