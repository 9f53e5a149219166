"""Seconds per BBN ResNet-50 training step on this machine (forward + backward of both
branches, channels_last fp32), to set the file-path throughput beside the model's.

    python benchmarks/resnet50_step.py [--batch 16] [--size 224] [--steps 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from bbn.devices import resolve_device
from bbn.models import create_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="images per branch")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one untimed")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    model = create_model("bbn_resnet50", 100, 3).to(device=device, memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        f_c, f_r = model.features(x, "cb"), model.features(x, "rb")
        model.logits(f_c, f_r, 0.5).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    print(f"BBN ResNet-50, {args.batch} + {args.batch} images at {args.size}x{args.size}, {device}: "
          f"{seconds:.2f} s a step, {2 * args.batch / seconds:.1f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
