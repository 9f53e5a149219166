"""Image-folder decode and transform rate, JPEG against PNG, at a few image sizes: images/s
of one process (what each DataLoader worker of `bbn train` does per image).

    python benchmarks/folder_decode.py [--images 64] [--sides 256,500] [--formats jpeg,png] [--repeats 3]

For each format and side it writes `--images` smooth random-texture images (side x 3/4 side
pixels; JPEG at quality 90) into an image folder, then times reading them with bbn's decoder
(`bbn.data.transforms.read_image`: the header check, the decode, RGB) alone, then with the
training transform (RandomResizedCrop to `--crop` + flip) and with the test transform (the
shorter side resized to 256/224 of the crop, centre crop), each to uint8 as the workers hand
them over. Every figure is the median of `--repeats` passes over the images after one untimed
pass. `benchmarks/file_throughput.py` measures the whole file-backed loader with workers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from bbn.config import DataConfig
from bbn.data.transforms import crop_transform, read_image
from bbn.engine.provenance import host_line

SUFFIX = {"jpeg": ".jpg", "png": ".png"}


def write_images(root: Path, fmt: str, images: int, side: int, seed: int = 0) -> float:
    """`images` files of format `fmt` in 4 class folders; returns their mean size in kB."""
    rng = np.random.RandomState(seed)
    height = side * 3 // 4
    sizes = []
    for i in range(images):
        # a noise field upsampled: compresses like a photograph, not like noise
        small = rng.randint(0, 256, (height // 16 + 1, side // 16 + 1, 3)).astype(np.uint8)
        path = root / f"class{i % 4}" / f"{i:04d}{SUFFIX[fmt]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(small).resize((side, height), Image.BILINEAR).save(path, **({"quality": 90} if fmt == "jpeg" else {}))
        sizes.append(path.stat().st_size)
    return float(np.mean(sizes)) / 1024


def rate(paths: list[str], work: Callable[[str], torch.Tensor], repeats: int) -> float:
    """Median images/s of `work` over `paths`, after one untimed pass."""
    for p in paths:
        work(p)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for p in paths:
            work(p)
        rates.append(len(paths) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images per format and side (default 64)")
    parser.add_argument("--sides", default="256,500", help="comma-separated image widths; height = 3/4")
    parser.add_argument("--formats", default="jpeg,png", help="comma-separated, of jpeg, png")
    parser.add_argument("--crop", type=int, default=224, help="the crop the network sees (data.image_size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in a worker)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    formats = [f for f in args.formats.split(",") if f]
    if any(f not in SUFFIX for f in formats):
        parser.error(f"--formats takes {', '.join(SUFFIX)}")
    sides = [int(s) for s in args.sides.split(",") if s]
    cfg = DataConfig(source="image_folder", image_size=args.crop)
    train, test = crop_transform(cfg, train=True), crop_transform(cfg, train=False)
    torch.manual_seed(0)
    print(f"host: {host_line()}")
    print(f"{args.images} images per row, crop {args.crop}, one process, median of {args.repeats} passes "
          "after one untimed pass\n")
    print("| format | image | kB/image | decode img/s | decode + train crop img/s | decode + test crop img/s |")
    print("|---|---|---|---|---|---|")
    for fmt in formats:
        for side in sides:
            with tempfile.TemporaryDirectory() as tmp:
                kb = write_images(Path(tmp), fmt, args.images, side)
                paths = sorted(str(p) for p in Path(tmp).rglob(f"*{SUFFIX[fmt]}"))
                decode = rate(paths, read_image, args.repeats)
                trained = rate(paths, lambda p: train(read_image(p)), args.repeats)
                tested = rate(paths, lambda p: test(read_image(p)), args.repeats)
            print(f"| {fmt.upper()} | {side}x{side * 3 // 4} | {kb:.0f} | {decode:,.0f} | {trained:,.0f} | "
                  f"{tested:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
