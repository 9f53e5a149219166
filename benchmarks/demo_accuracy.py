"""Accuracy of the demo: BBN and the CE control on digits-LT over several seeds.

    python benchmarks/demo_accuracy.py [--seeds 3] [--precisions auto] [--out runs/demo-accuracy] [--append]

Trains each preset once per seed (the data subset is fixed by data.subset_seed; `seed`
changes initialisation, sampling and augmentation) and per precision (`--precisions
fp32,bf16`: the parity of bf16 with fp32), prints a Markdown table of top-1 and shot-group
accuracy (mean ± std over seeds) with the wall time of one run, and with --append adds it to
benchmarks/RESULTS.md with the machine, the command and the date. With two precisions, each
preset gets a parity line: the difference of mean top-1, and whether it is within noise
(no larger than the larger of the two standard deviations).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


from bbn.config import load_config
from bbn.tools.reproduce import mean_std
from bbn.tools.runner import start_run
from throughput import append_results

PRESETS = ("digits_bbn", "digits_ce")
COLUMNS = ("top1", "many", "medium", "few")
# --smoke: one short epoch on a few images, only to show the script works.
SMOKE = ["train.epochs=1", "train.warmup_epochs=0", "train.milestones=[]", "data.n_max=20",
         "data.test_per_class=5", "train.threads=1"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--precisions", default="auto", help="comma-separated train.precision values")
    parser.add_argument("--out", default="runs/demo-accuracy", help="parent folder of the runs")
    parser.add_argument("--append", action="store_true", help="append the table to RESULTS.md")
    parser.add_argument("--smoke", action="store_true",
                        help="one epoch on a few images: only checks the script works")
    args = parser.parse_args()
    if args.smoke and args.append:
        parser.error("--smoke figures mean nothing; drop --append")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    rows, parity = [], []
    for preset in PRESETS:
        top1: dict[str, list[float]] = {}
        for precision in precisions:
            finals, seconds = [], []
            for seed in range(args.seeds):
                cfg = load_config(preset, [f"seed={seed}", f"train.precision={precision}", "train.tensorboard=false",
                                           *(SMOKE if args.smoke else [])])
                start = time.perf_counter()
                _, final = start_run(cfg, Path(args.out) / f"{preset}-{precision}-s{seed}-{stamp}", progress=False,
                                     log=lambda line: None)
                seconds.append(time.perf_counter() - start)
                finals.append(final)
                print(f"{preset} {precision} seed {seed}: top-1 {final['top1']:.2f}%  ({seconds[-1]:.0f} s)",
                      file=sys.stderr)
            resolved = finals[0]["precision"]["name"]
            top1[resolved] = [f["top1"] for f in finals]
            cells = [mean_std([f[c] for f in finals]) for c in COLUMNS]
            rows.append(f"| {preset} | {resolved} | {' | '.join(cells)} | {statistics.mean(seconds):.0f} |")
        if {"fp32", "bf16"} <= top1.keys() and args.seeds > 1:
            diff = statistics.mean(top1["bf16"]) - statistics.mean(top1["fp32"])
            noise = max(statistics.stdev(top1["bf16"]), statistics.stdev(top1["fp32"]))
            parity.append(f"{preset}: mean top-1 bf16 - fp32 = {diff:+.2f} points; larger std {noise:.2f}: "
                          + ("within noise" if abs(diff) <= noise else "NOT within noise"))
    table = "\n".join([
        "| preset | precision | top-1 % | many % | medium % | few % | s / run |",
        "|---|---|---|---|---|---|---|",
        *rows,
        *([""] + [f"* {line}" for line in parity] if parity else []),
    ])
    print(table)
    if args.append:
        append_results(f"Demo accuracy, {args.seeds} seeds", "cpu",
                       f"Last-epoch test accuracy (mean ± std over seeds 0..{args.seeds - 1}).", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
