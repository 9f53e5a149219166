"""Is one trunk pass over both branches' batches faster than the reference's two passes?

    python benchmarks/one_pass.py [--steps 6] [--repeats 2] [--batch 128]

Forward + backward of BBN ResNet-32 (channels_last, fp32) on 128 + 128 images: `two` runs
the shared trunk twice (the reference, BatchNorm per batch), `one` runs it once on the 256
images (BatchNorm over both) and splits before the branch blocks. Prints seconds per step.
"""

from __future__ import annotations

import argparse
import time

import torch

from bbn.models import create_model


def step_seconds(model: torch.nn.Module, x: torch.Tensor, one_pass: bool, steps: int) -> float:
    half = x.shape[0] // 2
    start = time.perf_counter()
    for _ in range(steps):
        if one_pass:
            shared = model.backbone.trunk(x)
            f_c = model.backbone.cb_block(shared[:half]).mean((2, 3))
            f_r = model.backbone.rb_block(shared[half:]).mean((2, 3))
        else:
            f_c = model.features(x[:half], "cb")
            f_r = model.features(x[half:], "rb")
        (f_c.sum() + f_r.sum()).backward()
    return (time.perf_counter() - start) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128, help="images per branch")
    args = parser.parse_args()
    model = create_model("bbn_resnet32", 10, 3).to(memory_format=torch.channels_last)
    x = torch.randn(2 * args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    step_seconds(model, x, True, 1), step_seconds(model, x, False, 1)  # warm-up
    print("| repeat | two passes s/step | one pass s/step |\n|---|---|---|")
    for r in range(args.repeats):
        print(f"| {r + 1} | {step_seconds(model, x, False, args.steps):.3f} | "
              f"{step_seconds(model, x, True, args.steps):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
