"""The arithmetic ceiling of BBN training on this machine: how many images/s the
convolutions alone allow, next to the reference pipeline and our default, in one run.

    python benchmarks/ceiling.py [--steps 20] [--append]

1. FLOPs of one BBN ResNet-32 training step (128 + 128 images, forward and backward),
   counted by torch.utils.flop_counter (convolutions and the classifier's matmul).
2. The machine's dense peak as this torch build reaches it, per precision: the best of many
   square matmuls (the best case for the CPU's vector units), in GFLOP/s; fp32, and bf16
   where oneDNN runs bf16 natively.
3. Ceiling images/s = peak / FLOPs per image: no step can train faster in that precision,
   even with every non-arithmetic cost (BatchNorm, ReLU, data, optimiser) removed and
   convolutions as efficient as a large matmul.
4. The reference pipeline, the fp32 path (`ours-channels_last`), compiled stages and our
   default (`ours`, train.precision=auto) measured in the same run
   (benchmarks/throughput.py), each as a fraction of the ceiling of its precision.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from throughput import append_results, ceiling_of, machine, measure

from bbn.engine.speed import bf16_fast
from bbn.models import create_model

VARIANTS = ("reference", "ours-channels_last", "ours-compile", "ours")


def step_flops(batch: int = 128) -> int:
    """FLOPs of one BBN training step: two trunk passes of `batch` images, their branch
    blocks, the classifier and the backward pass."""
    model = create_model("bbn_resnet32", 10, 3)
    x_c, x_r = torch.randn(batch, 3, 32, 32), torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        f_c = model.features(x_c, "cb")
        f_r = model.features(x_r, "rb")
        logits = model.logits(f_c, f_r, 0.5)
        F.cross_entropy(logits, y).backward()
    return counter.get_total_flops()


def matmul_peak_gflops(sizes: tuple[int, ...] = (512, 1024, 2048), repeats: int = 10,
                       dtype: torch.dtype = torch.float32) -> float:
    """The best GFLOP/s of square matmuls in `dtype` over `sizes`, `repeats` each: a generous
    peak, since a shared host only ever slows a single measurement down."""
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def image_flops(smoke: bool = False) -> float:
    """FLOPs per training image of a BBN step (both branches' images counted)."""
    batch = 8 if smoke else 128
    return step_flops(batch) / (2 * batch)


def ceilings_per_precision(flops_per_image: float, smoke: bool = False) -> dict[str, float]:
    """Ceiling images/s of a BBN step per precision this CPU runs natively (fp32; bf16 where
    oneDNN reports native bf16)."""
    sizes, repeats = ((64,), 1) if smoke else ((512, 1024, 2048), 10)
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if bf16_fast(torch.device("cpu")) else {})}
    return {name: matmul_peak_gflops(sizes, repeats, dtype) * 1e9 / flops_per_image for name, dtype in dtypes.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run that only checks the script works (small batches and matmuls); "
                             "exits 1 when a variant fails")
    args = parser.parse_args()
    if args.smoke and args.append:
        parser.error("--smoke figures mean nothing; drop --append")
    print(machine("cpu"))
    flops_per_image = image_flops(args.smoke)
    before = ceilings_per_precision(flops_per_image, args.smoke)
    rows = {name: measure(name, args.steps, args.warmup, "cpu", None, args.smoke) for name in VARIANTS}
    if any("error" in r for r in rows.values()):
        print("\n".join(f"{name} failed: {r['error']}" for name, r in rows.items() if "error" in r))
        return 1
    after = ceilings_per_precision(flops_per_image, args.smoke)  # measured before and after the variants: the better
    ceilings = {name: max(before[name], after[name]) for name in before}
    reference = rows["reference"]["images_per_step"] / rows["reference"]["step_s"]
    lines = [f"FLOPs per training image (forward + backward, both branches counted): "
             f"{flops_per_image / 1e6:,.0f} M; ceilings: "
             + "; ".join(f"{name} {c:,.0f} img/s ({c * flops_per_image / 1e9:,.0f} GFLOP/s matmul peak, "
                         f"{c / reference:.2f}x the reference)" for name, c in ceilings.items()) + ".", "",
             "| | precision | train img/s | GFLOP/s | of its ceiling | vs reference |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        rate = r["images_per_step"] / r["step_s"]
        precision = r.get("precision", "fp32")
        lines.append(f"| {name} | {precision} | {rate:,.0f} | {rate * flops_per_image / 1e9:,.0f} | "
                     f"{rate / ceiling_of(ceilings, precision):.0%} | {rate / reference:.2f}x |")
    for name, c in ceilings.items():
        lines.append(f"| ceiling ({name} matmul peak) | {name} | {c:,.0f} | {c * flops_per_image / 1e9:,.0f} | 100% | "
                     f"{c / reference:.2f}x |")
    text = "\n".join(lines)
    print(text)
    if args.append:
        append_results("Arithmetic ceiling, BBN ResNet-32", "cpu",
                       f"{args.steps} timed steps after {args.warmup} untimed per variant.", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
