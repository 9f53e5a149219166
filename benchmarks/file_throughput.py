"""Images/s of the file-backed data path (image folders, iNaturalist, ImageNet-LT lists):
JPEG decoding, the SPEC §4 transforms and the hand-over to the compute device, with N
DataLoader workers, on JPEGs this benchmark writes itself.

    python benchmarks/file_throughput.py [--images 512] [--side 500] [--workers 0,1,2] [--append]

It writes `--images` random-texture JPEGs (quality 90, `--side` x 3/4 side pixels, about
iNaturalist's size after its 800-pixel cap) into a temporary image folder of 8 classes, then
for each worker count plans epochs of `--batch`-image uniform batches through
`FileImages` exactly as `bbn train` does (train_batches: decode,
RandomResizedCrop 224 + flip, collation, transfer, normalisation) and reads the test
split through `eval_batches` (resize 256 + center crop 224). One epoch is run untimed first
(worker start-up), then `--epochs` are timed. No model runs: this is the rate the data path
can feed, the ceiling of a file-backed training run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from throughput import append_results  # noqa: E402

from bbn.config import build_config  # noqa: E402
from bbn.data.files import FileImages  # noqa: E402
from bbn.data.prepare import prepare_data  # noqa: E402
from bbn.devices import resolve_device  # noqa: E402

CLASSES = 8


def write_jpegs(root: Path, images: int, side: int, seed: int = 0) -> float:
    """`images` JPEGs in CLASSES class folders; returns their mean size in kB."""
    rng = np.random.RandomState(seed)
    height = side * 3 // 4
    sizes = []
    for i in range(images):
        # smooth random texture (a noise field upsampled) compresses like a photograph, not like noise
        small = rng.randint(0, 256, (height // 16 + 1, side // 16 + 1, 3)).astype(np.uint8)
        image = Image.fromarray(small).resize((side, height), Image.BILINEAR)
        path = root / f"class{i % CLASSES}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
        sizes.append(path.stat().st_size)
    return float(np.mean(sizes)) / 1024


def measure(root: Path, workers: int, batch: int, epochs: int, device: str, test_per_class: int) -> dict[str, float]:
    cfg = build_config({"data": {"source": "image_folder", "root": str(root), "test_per_class": test_per_class,
                                 "profile": "none", "imbalance_ratio": 1, "workers": workers},
                        "train": {"device": device}})
    data = prepare_data(cfg)
    dev = resolve_device(device)
    fmt = torch.channels_last
    train = FileImages(data.train, cfg, data.mean, data.std, dev, fmt, "train")
    test = FileImages(data.test, cfg, data.mean, data.std, dev, fmt, "test")
    generator = torch.Generator().manual_seed(0)
    steps = len(data.train) // batch

    def epoch() -> int:
        perm = torch.randperm(len(data.train), generator=generator)
        planned = [[(idx, k)] for k, idx in enumerate(perm[: steps * batch].split(batch))]
        seen = 0
        for (x, y), in train.train_batches(planned):
            seen += len(y)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return seen

    epoch()  # worker start-up, untimed
    start = time.perf_counter()
    seen = sum(epoch() for _ in range(epochs))
    train_s = time.perf_counter() - start
    list(test.eval_batches(batch // 2))  # untimed
    start = time.perf_counter()
    tested = sum(len(y) for _, y in test.eval_batches(batch // 2))
    eval_s = time.perf_counter() - start
    return {"train": seen / train_s, "eval": tested / eval_s, "train_images": seen, "test_images": tested}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512, help="JPEGs to write (default 512)")
    parser.add_argument("--side", type=int, default=500, help="image width in pixels; height = 3/4 of it")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--batch", type=int, default=64, help="images per batch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per worker count")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        kb = write_jpegs(root, args.images, args.side)
        lines = ["| workers | train img/s | test img/s |", "|---|---|---|"]
        for w in counts:
            print(f"measuring {w} worker(s) ...", file=sys.stderr)
            r = measure(root, w, args.batch, args.epochs, args.device, max(1, args.images // (4 * CLASSES)))
            lines.append(f"| {w} | {r['train']:,.0f} | {r['eval']:,.0f} |")
    load = max(load, os.getloadavg()[0])
    text = "\n".join(lines)
    what = (f"Device: {args.device}. {args.images} JPEGs of {args.side}x{args.side * 3 // 4} pixels "
            f"({kb:.0f} kB on average), {CLASSES} classes; train: {int(r['train_images'] / args.epochs)} images "
            f"per epoch in batches of {args.batch}, {args.epochs} timed epochs after one untimed; test: "
            f"{int(r['test_images'])} images in batches of {args.batch // 2}. Workers 0 = decoding in the "
            f"training process. Load average (1 min) at start or end, whichever higher: {load:.1f}.")
    print(text)
    if args.append:
        append_results("File-backed data path, images/s (decode + SPEC §4 transforms, no model)",
                       args.device, what, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
