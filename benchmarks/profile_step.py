"""Where a training step's time goes: torch.profiler over BBN steps on the CIFAR-10-LT-sized
synthetic set of benchmarks/throughput.py, with this package's trainer and its defaults.

    python benchmarks/profile_step.py [--steps 6] [key=value ...]
"""

from __future__ import annotations

import argparse

from torch.profiler import ProfilerActivity, profile

from throughput import synthetic_trainer

from bbn.config import load_config
from bbn.engine.session import TrainState
from bbn.engine.train import train_epoch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("overrides", nargs="*", help="config overrides on cifar10_ir100_bbn")
    args = parser.parse_args()
    cfg = load_config("cifar10_ir100_bbn", ["train.tensorboard=false", "train.device=cpu", *args.overrides])
    s = synthetic_trainer(cfg)
    train_epoch(s, TrainState(), progress=False, max_steps=2)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_epoch(s, TrainState(), progress=False, max_steps=args.steps)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
