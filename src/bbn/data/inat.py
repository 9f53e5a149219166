"""iNaturalist 2017 / 2018 (sources "inat2017", "inat2018") from annotation JSON, and
`convert_inat` (`bbn data convert-inat`).

Two formats are read (SPEC §4):
* original, COCO-style: `images` ({id, file_name, width, height}), `annotations`
  ({image_id, category_id}) and `categories` ({id, name}); labels are the categories in
  order of id (iNaturalist's ids are already 0..C-1);
* converted, the reference implementation's: `{"annotations": [{"image_id", "fpath",
  "im_height", "im_width", "category_id"}, ...], "num_classes": N}`, category_id in [0, N).

Relative image paths start at data.root, or, when it is unset, at the annotation file's
folder. `data.train_file` is the train JSON, `data.test_file` the val JSON (the set the
paper reports; the unlabelled test JSON has no annotations).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


from bbn.config import DataConfig
from bbn.data.annotations import check_unused, listed_files, resolve_file
from bbn.data.registry import ANNOTATION_READS, SOURCES
from bbn.data.sources import Splits
from bbn.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from bbn.errors import BBNError

FIX = "re-download it, or re-convert it with bbn data convert-inat"


def read_json(path: Path) -> Any:
    """A JSON file, with the line and column of a syntax error."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BBNError(f"cannot read '{path}' ({exc.strerror}); check the file and its permissions") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BBNError(f"'{path}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                       f"{FIX}") from None
    except UnicodeDecodeError:
        raise BBNError(f"'{path}' is not UTF-8 JSON text; {FIX}") from None


def json_format(obj: Any, path: Path) -> str:
    """'original' (images, annotations, categories) or 'converted' (annotations, num_classes)."""
    if isinstance(obj, dict) and {"images", "annotations", "categories"} <= obj.keys():
        return "original"
    if isinstance(obj, dict) and {"annotations", "num_classes"} <= obj.keys() and "images" not in obj:
        return "converted"
    has = ", ".join(sorted(obj)) if isinstance(obj, dict) else f"a {type(obj).__name__}"
    raise BBNError(f"'{path}' is neither an iNaturalist annotation file (images, annotations, categories) nor a "
                   f"converted one (annotations, num_classes); it has {has or 'nothing'}; {FIX}")


def _entries(obj: dict[str, Any], key: str, path: Path) -> list[Any]:
    value = obj[key]
    if not isinstance(value, list):
        raise BBNError(f"'{path}': '{key}' is a {type(value).__name__}, not a list; {FIX}")
    return value


def _field(entry: Any, key: str, where: str, path: Path, kinds: tuple[type, ...]) -> Any:
    """entry[key], which must be one of `kinds` (never a bool)."""
    if not isinstance(entry, dict):
        raise BBNError(f"'{path}': {where} is a {type(entry).__name__}, not an object; {FIX}")
    if key not in entry:
        raise BBNError(f"'{path}': {where} has no '{key}'; {FIX}")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        wanted = " or ".join("an integer" if k is int else "a string" for k in kinds)
        raise BBNError(f"'{path}': {where} '{key}' is {value!r}, not {wanted}; {FIX}")
    if isinstance(value, str) and not value:
        raise BBNError(f"'{path}': {where} '{key}' is empty; {FIX}")
    return value


class Categories:
    """Category ids -> labels 0..C-1 (in order of id) and the class names."""

    def __init__(self, obj: dict[str, Any], path: Path) -> None:
        ids: dict[int, str] = {}
        for k, cat in enumerate(_entries(obj, "categories", path)):
            cid = _field(cat, "id", f"categories[{k}]", path, (int,))
            if cid in ids:
                raise BBNError(f"'{path}': categories[{k}] repeats id {cid}; {FIX}")
            name = cat.get("name")
            ids[cid] = name if isinstance(name, str) and name else str(cid)
        if not ids:
            raise BBNError(f"'{path}' has no categories; {FIX}")
        order = sorted(ids)
        self.label = {cid: i for i, cid in enumerate(order)}
        self.names = [ids[cid] for cid in order]
        self.path = path


def _images(obj: dict[str, Any], path: Path) -> dict[int | str, dict[str, Any]]:
    by_id: dict[int | str, dict[str, Any]] = {}
    for k, image in enumerate(_entries(obj, "images", path)):
        iid = _field(image, "id", f"images[{k}]", path, (int, str))
        _field(image, "file_name", f"images[{k}]", path, (str,))
        if iid in by_id:
            raise BBNError(f"'{path}': images[{k}] repeats image id {iid!r}; {FIX}")
        by_id[iid] = {**image, "_entry": k}
    return by_id


def parse_original(obj: dict[str, Any], path: Path, categories: Categories) -> list[tuple[str, int, int, dict]]:
    """(file_name, label, annotation index, image entry) per annotation of an original file."""
    images = _images(obj, path)
    annotations = _entries(obj, "annotations", path)
    if not annotations:
        raise BBNError(f"'{path}' has no annotations (an unlabelled test file?); use a labelled file: "
                       "the train or val JSON")
    seen: set[int | str] = set()
    out = []
    for k, ann in enumerate(annotations):
        where = f"annotations[{k}]"
        iid = _field(ann, "image_id", where, path, (int, str))
        cid = _field(ann, "category_id", where, path, (int,))
        if iid not in images:
            raise BBNError(f"'{path}': {where} image_id {iid!r} is not in 'images'; {FIX}")
        if iid in seen:
            raise BBNError(f"'{path}': {where} labels image {iid!r} a second time; keep one annotation per image")
        if cid not in categories.label:
            raise BBNError(f"'{path}': {where} category_id {cid} is not a category of '{categories.path}'; "
                           "use the train and val files of one iNaturalist release")
        seen.add(iid)
        out.append((images[iid]["file_name"], categories.label[cid], k, images[iid]))
    return out


def _num_classes(obj: dict[str, Any], path: Path) -> int:
    n = obj["num_classes"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BBNError(f"'{path}': num_classes is {n!r}, not a positive integer; {FIX}")
    return n


def parse_converted(obj: dict[str, Any], path: Path, num_classes: int) -> list[tuple[str, int, int, dict]]:
    """(fpath, label, annotation index, entry) per annotation of a converted file."""
    annotations = _entries(obj, "annotations", path)
    if not annotations:
        raise BBNError(f"'{path}' has no annotations; {FIX}")
    out = []
    for k, ann in enumerate(annotations):
        where = f"annotations[{k}]"
        fpath = _field(ann, "fpath", where, path, (str,))
        cid = _field(ann, "category_id", where, path, (int,))
        if not 0 <= cid < num_classes:
            raise BBNError(f"'{path}': {where} category_id {cid} is outside [0, {num_classes}) "
                           f"(num_classes {num_classes}); {FIX}")
        out.append((fpath, cid, k, ann))
    return out


def load_inat(cfg: DataConfig) -> Splits:
    """Train and val splits of an iNaturalist release from its annotation files."""
    check_unused(cfg, cfg.source, ("test_root", "download"))
    train_path = resolve_file(cfg.train_file, "train_file", cfg, "the train JSON (train2018.json or converted)")
    test_path = resolve_file(cfg.test_file, "test_file", cfg, "the val JSON (val2018.json or converted)")
    train_obj, test_obj = read_json(train_path), read_json(test_path)
    fmt = json_format(train_obj, train_path)
    if json_format(test_obj, test_path) != fmt:
        raise BBNError(f"'{train_path}' and '{test_path}' are in different formats; convert one with "
                       "bbn data convert-inat so both are original or both converted")
    if fmt == "original":
        categories = Categories(train_obj, train_path)
        names = categories.names
        train = parse_original(train_obj, train_path, categories)
        test = parse_original(test_obj, test_path, categories)
    else:
        n = _num_classes(train_obj, train_path)
        if _num_classes(test_obj, test_path) != n:
            raise BBNError(f"'{test_path}' has num_classes {test_obj['num_classes']} but '{train_path}' has {n}; "
                           "use the train and val files of one release")
        train = parse_converted(train_obj, train_path, n)
        if n > len(train):  # more classes than training images: some class has none
            raise BBNError(f"'{train_path}': num_classes {n} is more than its {len(train)} annotations; every "
                           f"class needs a training image, {FIX}")
        names = [str(c) for c in range(n)]
        test = parse_converted(test_obj, test_path, n)
    train_files, test_files = (
        listed_files(cfg, path, [r[0] for r in records], [r[1] for r in records], [r[2] for r in records], names,
                     f"annotations[{{}}] of '{path}'", "point data.root at the folder the image paths start from")
        for records, path in ((train, train_path), (test, test_path)))
    return Splits(train_files, test_files, IMAGENET_MEAN, IMAGENET_STD)


SOURCES.register("inat2017", reads=ANNOTATION_READS)(load_inat)
SOURCES.register("inat2018", reads=ANNOTATION_READS)(load_inat)


def _write_json_new(obj: Any, dst: Path) -> None:
    """Write `dst`, which must not exist, whole or not at all."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            json.dump(obj, f)
        os.replace(tmp, dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BBNError(f"cannot write '{dst}' ({exc.strerror}); choose a writable path") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _size(image: dict[str, Any], key: str, path: Path) -> int:
    return _field(image, key, f"images[{image['_entry']}]", path, (int,))


def to_converted(obj: dict[str, Any], path: Path, root: str | None) -> dict[str, Any]:
    """The reference's converted form of an original file (fpath = root/file_name)."""
    categories = Categories(obj, path)
    annotations = [
        {"image_id": image["id"], "fpath": os.path.join(root, rel) if root else rel,
         "im_height": _size(image, "height", path), "im_width": _size(image, "width", path), "category_id": label}
        for rel, label, _, image in parse_original(obj, path, categories)
    ]
    return {"annotations": annotations, "num_classes": len(categories.names)}


def to_original(obj: dict[str, Any], path: Path, root: str | None) -> dict[str, Any]:
    """An original (COCO-style) file from a converted one; file_name is fpath relative to
    `root` when it lies under it. Category names are the label numbers."""
    n = _num_classes(obj, path)
    images, annotations, ids = [], [], set()
    for fpath, label, k, ann in parse_converted(obj, path, n):
        iid = _field(ann, "image_id", f"annotations[{k}]", path, (int, str)) if "image_id" in ann else k
        if iid in ids:
            raise BBNError(f"'{path}': annotations[{k}] repeats image_id {iid!r}; keep one annotation per image")
        ids.add(iid)
        rel = os.path.relpath(fpath, root) if root and Path(fpath).is_relative_to(root) else fpath
        image = {"id": iid, "file_name": rel}
        if "im_width" in ann and "im_height" in ann:
            image.update(width=ann["im_width"], height=ann["im_height"])
        images.append(image)
        annotations.append({"id": k, "image_id": iid, "category_id": label})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in range(n)]}


def convert_inat(src: str | Path, dst: str | Path, root: str | None = None) -> tuple[str, int, int]:
    """Convert an original iNaturalist JSON to the reference's converted form, or a
    converted one back; returns (the format written, images, classes)."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise BBNError(f"'{src}' not found; pass an iNaturalist annotation JSON (e.g. train2018.json)")
    if dst.exists():
        raise BBNError(f"'{dst}' already exists; choose another output path or delete it")
    obj = read_json(src)
    if json_format(obj, src) == "original":
        out, written = to_converted(obj, src, root), "converted"
        classes = out["num_classes"]
    else:
        out, written = to_original(obj, src, root), "original"
        classes = len(out["categories"])
    _write_json_new(out, dst)
    return written, len(out["annotations"]), classes
