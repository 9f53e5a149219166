"""Tiny image datasets on disk for the file-source tests: JPEG folders, iNaturalist JSON
(original and converted) and ImageNet-LT-style lists, written with Pillow."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_image(path: Path, value: int, size: tuple[int, int] = (20, 24), seed: int = 0, fmt: str | None = None) -> None:
    """An RGB image (height, width) around grey level `value`, with seeded noise."""
    rng = np.random.RandomState(seed)
    pixels = np.clip(value + rng.randint(-20, 21, (*size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: Path, width: int = 14000, height: int = 14000) -> Path:
    """A PNG of a few hundred bytes whose header declares width x height RGB pixels: a
    decoder that trusts it allocates width * height * 3 bytes (14000 x 14000: 588 MB)."""
    rows = zlib.compress(b"\0" * (1 + 3 * width) * 4)  # the first rows; the rest is missing
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b""))
    return path


def image_folder(root: Path, counts: list[int], names: list[str] | None = None) -> list[list[Path]]:
    """`root/<class>/<i>.jpg` with counts[c] images of class c; a class's images share a
    grey level (40 + 60 c) so they are learnable. Returns the paths per class."""
    names = names or [f"class{c}" for c in range(len(counts))]
    out = []
    for c, (name, n) in enumerate(zip(names, counts)):
        paths = [root / name / f"{i:03d}.jpg" for i in range(n)]
        for i, p in enumerate(paths):
            write_image(p, 40 + 60 * c, size=(18 + i % 5, 22 + i % 3), seed=100 * c + i)
        out.append(paths)
    return out


def inat_original(images: list[tuple[str, int]], category_ids: list[int], names: list[str] | None = None,
                  size: tuple[int, int] = (24, 20)) -> dict[str, Any]:
    """An original (COCO-style) iNaturalist annotation dict: (file_name, category_id) per image."""
    names = names or [f"species {c}" for c in category_ids]
    return {
        "info": {"year": 2018},
        "images": [{"id": 1000 + k, "file_name": f, "width": size[0], "height": size[1]}
                   for k, (f, _) in enumerate(images)],
        "annotations": [{"id": 5000 + k, "image_id": 1000 + k, "category_id": c}
                        for k, (_, c) in enumerate(images)],
        "categories": [{"id": c, "name": n, "supercategory": "Plantae"} for c, n in zip(category_ids, names)],
    }


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def write_list(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{rel} {label}\n" for rel, label in rows))
    return path
