"""Evaluation speed of BBN ResNet-32 with each convolution's BatchNorm folded into it, beside
the plain eval-mode network, in one run.

    python benchmarks/eval_fold.py [--batch 512] [--passes 5] [--rounds 2]

Folding uses `torch.fx.experimental.optimization.fuse` on a copy of the eval-mode network
(channels-last, fp32, random weights and 32×32 images); each round reports the best of
`--passes` forward passes of one batch for both, and the largest logit difference.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.fx.experimental.optimization import fuse

from bbn.engine.provenance import host_line
from bbn.models import create_model


def rate(model: torch.nn.Module, x: torch.Tensor, passes: int) -> float:
    """Images/s of the best of `passes` forward passes (after one untimed pass)."""
    with torch.no_grad():
        model(x)
        best = float("inf")
        for _ in range(passes):
            start = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - start)
    return len(x) / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    plain = create_model("bbn_resnet32", 10, 3).eval().to(memory_format=torch.channels_last)
    folded = fuse(copy.deepcopy(plain))
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        diff = float((plain(x) - folded(x)).abs().max())
    print(host_line())
    print("| round | plain img/s | folded img/s | folded / plain |")
    print("|---|---|---|---|")
    for r in range(1, args.rounds + 1):
        a, b = rate(plain, x, args.passes), rate(folded, x, args.passes)
        print(f"| {r} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x |")
    print(f"max |logit difference| {diff:.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
