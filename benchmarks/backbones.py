"""Training-step speed of several networks, BBN and plain, on this host: images/s of one
optimisation step (forward, loss, backward, SGD update) as `bbn train` runs it.

    python benchmarks/backbones.py [--size 64] [--batch 32] [--steps 2] [--repeats 3] [--threads N]
                                   [--models resnet32,timm/resnet18,...] [--variants bbn,plain]

For each network and variant (BBN: the bilateral model and the BBN method, a uniform and a
reversed batch of `--batch` images each per step; plain: the single network and CE, one batch)
it builds the model and method through bbn's registries, feeds random `--size` x `--size`
images (channels-last, as training does), runs one untimed warm-up step, then times
`--repeats` runs of `--steps` steps and reports the median images/s (images the step trains
on: 2 x batch for BBN). The ViT is ViT-Tiny cut to 4 blocks of 8-pixel patches. The host
line gives the CPU, its vector extensions, torch and the threads used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bbn.config import build_config
from bbn.engine.provenance import host_line
from bbn.methods import METHODS, Batch, StepContext
from bbn.models import create_model, num_params

# (name as --models gives it, model name of the plain network, model.options at input size S)
NETWORKS = {
    "resnet32": ("resnet32", lambda s: {}),
    "timm/resnet18": ("timm/resnet18", lambda s: {}),
    "timm/convnext_atto": ("timm/convnext_atto", lambda s: {}),
    "timm/efficientnet_b0": ("timm/efficientnet_b0", lambda s: {}),
    "timm/vit_tiny": ("timm/vit_tiny_patch16_224", lambda s: {"img_size": s, "patch_size": 8, "depth": 4}),
}


def measure(name: str, bilateral: bool, size: int, batch: int, steps: int, repeats: int) -> dict[str, float]:
    """Median images/s of the training step of network `name` (BBN or plain)."""
    base, options = NETWORKS[name]
    model_name = ("bbn_" if bilateral else "") + base
    method_name = "bbn" if bilateral else "ce"
    cfg = build_config({"model": {"name": model_name}, "method": {"name": method_name},
                        "train": {"batch_size": batch, "epochs": 10, "milestones": [5], "warmup_epochs": 0}})
    labels = torch.arange(max(4 * batch, 20)) % 10  # every class present (the reversed sampler needs it)
    method = METHODS.get(method_name)(cfg, labels, 10)
    torch.manual_seed(0)
    model = create_model(model_name, 10, 3, options=options(size))
    model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)

    def images() -> torch.Tensor:
        return torch.randn(batch, 3, size, size, generator=generator).contiguous(memory_format=torch.channels_last)

    y = torch.randint(0, 10, (batch,), generator=generator)
    batch_in = Batch(images(), y, images(), y.flip(0)) if bilateral else Batch(images(), y)

    def step(i: int) -> int:
        out = method.step(model, batch_in, StepContext(1, i, torch.Generator().manual_seed(i)))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return int(out.images)

    step(0)  # warm-up, untimed
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        seen = sum(step(1 + r * steps + i) for i in range(steps))
        rates.append(seen / (time.perf_counter() - start))
    return {"rate": statistics.median(rates), "params": num_params(model) / 1e6, "per_step": seen / steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (default 64)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (per stream for BBN)")
    parser.add_argument("--steps", type=int, default=2, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--models", default=",".join(NETWORKS), help=f"comma-separated, of {', '.join(NETWORKS)}")
    parser.add_argument("--variants", default="bbn,plain", help="bbn, plain or both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in NETWORKS]
    if unknown:
        parser.error(f"unknown network {unknown[0]!r}; choose from {', '.join(NETWORKS)}")
    variants = [v for v in args.variants.split(",") if v]
    print(f"host: {host_line()}")
    print(f"input {args.size}x{args.size}, batch {args.batch} (BBN: {args.batch} + {args.batch}), "
          f"median of {args.repeats} x {args.steps} steps after 1 warm-up step, fp32, channels-last\n")
    print("| network | variant | params (M) | images/step | train img/s |")
    print("|---|---|---|---|---|")
    for name in names:
        for variant in variants:
            print(f"measuring {name} {variant} ...", file=sys.stderr)
            r = measure(name, variant == "bbn", args.size, args.batch, args.steps, args.repeats)
            print(f"| {name} | {'BBN' if variant == 'bbn' else 'plain (CE)'} | {r['params']:.2f} | "
                  f"{r['per_step']:.0f} | {r['rate']:,.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
