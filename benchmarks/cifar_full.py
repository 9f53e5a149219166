"""The paper's CIFAR-10-LT run, timed in one command: BBN ResNet-32, imbalance 100, 200 epochs.

    python benchmarks/cifar_full.py --root DATA [--device cuda] [--compile] [--out RUN]
                                    [--budget 1.0] [--append] [key=value ...]

Trains the `cifar10_ir100_bbn` preset as `bbn train` does by default (train.precision=auto:
bf16 on a GPU or CPU that runs it natively, fp16 with a gradient scaler on a GPU without
bf16; channels_last; the whole uint8 set on the device; the host waits every
train.log_every steps only), optionally with compiled stages (`--compile`), on the CIFAR-10
python batches under DATA (`data.download=true` fetches them where there is a network:
pass `--download`). Prints the host, the precision the run resolved, wall seconds, the
median seconds per epoch, training images/s, last and best top-1, and the paper's figure
(top-1 79.82 %, SPEC §6). `--budget F` runs the recipe's first fraction with its schedule
scaled (bbn.engine.budget): a check of the flow, not the paper's number; config overrides
after the options change the run (and are printed with it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from throughput import append_results, machine

from bbn.config import load_config
from bbn.engine.runs import read_metrics
from bbn.tools.runner import start_run

PRESET = "cifar10_ir100_bbn"
PAPER_TOP1 = 100 - 20.18  # SPEC §6, Table 1: BBN's top-1 error on CIFAR-10-LT, IR 100


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="folder holding (or to receive) cifar-10-batches-py")
    parser.add_argument("--device", default="cuda", help="cuda (default), cpu, or cuda:N")
    parser.add_argument("--compile", action="store_true", help="train.compile=true (compiled residual stages)")
    parser.add_argument("--download", action="store_true", help="fetch CIFAR-10 (checksummed) when absent")
    parser.add_argument("--budget", type=float, default=1.0, help="run this fraction of the recipe (a flow check)")
    parser.add_argument("--out", help="the run folder (default: a temporary one, removed at the end)")
    parser.add_argument("--append", action="store_true", help="append the result to benchmarks/RESULTS.md")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (not the paper's run)")
    args = parser.parse_args()
    overrides = [f"data.root={args.root}", f"train.device={args.device}", f"train.budget={args.budget}",
                 f"train.compile={'true' if args.compile else 'false'}", "train.tensorboard=false",
                 *(["data.download=true"] if args.download else []), *args.overrides]
    cfg = load_config(PRESET, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "run"
        lines: list[str] = []
        start = time.perf_counter()
        run, final = start_run(cfg, out, progress=False, log=lines.append)
        wall = time.perf_counter() - start
        rows = read_metrics(run.metrics)
    precision = final["precision"]
    epoch_s = statistics.median(r["epoch_s"] for r in rows)
    rate = statistics.median(r["images_per_s"] for r in rows)
    text = "\n".join([
        "| preset | device | precision | compile | epochs | wall s | epoch s (median) | train img/s | "
        "top-1 % (last) | best top-1 % | paper top-1 % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {PRESET} | {args.device} | {precision['name']} | {'on' if args.compile else 'off'} | {final['epochs']} | "
        f"{wall:,.0f} | {epoch_s:.2f} | {rate:,.0f} | {final['top1']:.2f} | {final['best_top1']:.2f} | "
        f"{PAPER_TOP1:.2f} |"])
    print(machine(args.device))
    print(f"precision {precision['name']} ({precision['why']})" + (f"; overrides: {' '.join(args.overrides)}"
                                                                  if args.overrides else ""))
    print(text)
    if args.append:
        changed = [*([f"train.budget={args.budget}"] if args.budget != 1.0 else []), *args.overrides]
        note = f" {' '.join(changed)}: not the paper's run." if changed else ""
        append_results("CIFAR-10-LT IR 100, BBN, full schedule timed", args.device,
                       f"One run, seed {cfg.seed}.{note}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
