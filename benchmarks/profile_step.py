"""Where a training step's time goes: torch.profiler over BBN steps on the CIFAR-10-LT-sized
synthetic set of benchmarks/throughput.py, with this package's trainer and its defaults.

    python benchmarks/profile_step.py [--steps 6] [key=value ...]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from throughput import CIFAR_MEAN, CIFAR_STD, synthetic_cifar_lt

from bbn.config import load_config
from bbn.data.loader import DeviceImages
from bbn.data.prepare import PreparedData
from bbn.methods import METHODS
from bbn.models import create_model
from bbn.optim import build_optimizer
from bbn.speed import autocast_dtype, memory_format
from bbn.train import Session, train_epoch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("overrides", nargs="*", help="config overrides on cifar10_ir100_bbn")
    args = parser.parse_args()
    cfg = load_config("cifar10_ir100_bbn", ["train.tensorboard=false", "train.device=cpu", *args.overrides])
    train, test = synthetic_cifar_lt()
    device, fmt = torch.device("cpu"), memory_format(cfg.train.channels_last)
    torch.manual_seed(0)
    model = create_model(cfg.model.name, 10, 3).to(memory_format=fmt)
    s = Session(cfg=cfg, device=device, data=PreparedData(train, test, CIFAR_MEAN, CIFAR_STD), model=model,
                method=METHODS.get(cfg.method.name)(cfg, train.labels, 10),
                optimizer=build_optimizer(model, cfg.train), generator=torch.Generator().manual_seed(0),
                train_set=DeviceImages.create(train, CIFAR_MEAN, CIFAR_STD, device, fmt),
                test_set=DeviceImages.create(test, CIFAR_MEAN, CIFAR_STD, device, fmt),
                amp_dtype=autocast_dtype(cfg.train.precision, device))
    train_epoch(s, progress=False, max_steps=2)
    s.epoch = 0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_epoch(s, progress=False, max_steps=args.steps)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
