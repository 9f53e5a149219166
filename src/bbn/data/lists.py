"""Image lists (sources "imagenet_lt", "places_lt", "image_list"): the text files of
ImageNet-LT and Places-LT, one `relative/path.jpg label` per line.

`data.train_file` / `data.test_file` are the lists (e.g. ImageNet_LT_train.txt and
ImageNet_LT_test.txt); the paths in them start at data.root (else at the list's folder).
Labels are integers 0..C-1, C = the largest label + 1. A class is named after the folder
its images are in when all of them share one (ImageNet-LT: the WordNet id), else by its
number.
"""

from __future__ import annotations

import os
from pathlib import Path


from bbn.config import DataConfig
from bbn.data.annotations import check_unused, listed_files, resolve_file
from bbn.data.registry import ANNOTATION_READS, SOURCES
from bbn.data.sources import Splits
from bbn.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from bbn.errors import BBNError

LINE = "each line is 'relative/path.jpg label' with an integer label"


def read_list(path: Path) -> tuple[list[str], list[int], list[int]]:
    """(paths, labels, line numbers) of an image list; blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BBNError(f"'{path}' is not UTF-8 text (byte {exc.start}); {LINE}") from None
    except OSError as exc:
        raise BBNError(f"cannot read '{path}' ({exc.strerror}); check the file and its permissions") from None
    paths, labels, lines = [], [], []
    for number, line in enumerate(text.splitlines(), 1):
        item = line.strip()
        if not item:
            continue
        parts = item.rsplit(None, 1)
        shown = item if len(item) <= 60 else item[:57] + "..."
        if len(parts) != 2:
            raise BBNError(f"'{path}' line {number}: '{shown}' has no label; {LINE}")
        try:
            label = int(parts[1])
        except ValueError:
            raise BBNError(f"'{path}' line {number}: label '{parts[1][:20]}' is not an integer; {LINE}") from None
        if label < 0:
            raise BBNError(f"'{path}' line {number}: label {label} is negative; labels are 0..C-1")
        paths.append(parts[0])
        labels.append(label)
        lines.append(number)
    if not paths:
        raise BBNError(f"'{path}' lists no images; {LINE}")
    return paths, labels, lines


def folder_names(paths: list[str], labels: list[int], num_classes: int) -> list[str]:
    """Each class's name: the one folder all its images are in, else its number (and the
    numbers for all when two classes would share a name)."""
    folders: list[set[str]] = [set() for _ in range(num_classes)]
    for rel, label in zip(paths, labels):
        folders[label].add(os.path.basename(os.path.dirname(rel)))
    names = [next(iter(f)) if len(f) == 1 and next(iter(f)) else str(c) for c, f in enumerate(folders)]
    return names if len(set(names)) == num_classes else [str(c) for c in range(num_classes)]


@SOURCES.register("imagenet_lt", reads=ANNOTATION_READS)
@SOURCES.register("places_lt", reads=ANNOTATION_READS)
@SOURCES.register("image_list", reads=ANNOTATION_READS)
def load_image_lists(cfg: DataConfig) -> Splits:
    """Train and test splits from two image lists."""
    check_unused(cfg, cfg.source, ("test_root", "download"))
    parsed = []
    for key, what in (("train_file", "the training list (e.g. ImageNet_LT_train.txt)"),
                      ("test_file", "the test list (e.g. ImageNet_LT_test.txt)")):
        path = resolve_file(getattr(cfg, key), key, cfg, what)
        parsed.append((path, *read_list(path)))
    num_classes = max(max(labels) for _, _, labels, _ in parsed) + 1
    if num_classes > len(parsed[0][2]):  # more classes than training images: some class has none
        path, _, labels, lines = max(parsed, key=lambda p: max(p[2]))
        at = labels.index(num_classes - 1)
        raise BBNError(f"'{path}' line {lines[at]}: label {num_classes - 1} makes more classes than the "
                       f"{len(parsed[0][2])} training images; labels are 0..C-1")
    names = folder_names(parsed[0][1], parsed[0][2], num_classes)
    train, test = (listed_files(cfg, path, rels, labels, lines, names, f"line {{}} of '{path}'",
                                "point data.root at the folder the listed paths start from")
                   for path, rels, labels, lines in parsed)
    return Splits(train, test, IMAGENET_MEAN, IMAGENET_STD)
