"""Every random draw of training, keyed by where it happens.

A draw's seed is a function of the run's seed and its position alone: what it is for, the
1-based epoch, the step, the rank and the stream. So a run is reproducible, an epoch
resumed part-way draws exactly what it would have drawn (nothing is replayed and no
generator state is saved), and what must agree across processes agrees:

* PLAN     the epoch's index streams (step 0, every rank alike: the ranks then shard them);
* STEP     the step's own draws (Mixup's lambda and layer, a stochastic alpha; every rank alike);
* AUGMENT  one stream's crops and flips in one step (per rank: each rank augments its share);
* GLOBAL   torch's global generator, reseeded before each step (per rank), for draws a
           model makes without an explicit generator (e.g. dropout in a backbone).

A seed is a BLAKE2b hash of the whole key, so nearby keys give unrelated streams (and it
costs about a microsecond: a step makes a handful).
"""

from __future__ import annotations

import hashlib
from enum import IntEnum

import torch


class Draw(IntEnum):
    """What a keyed draw is for (part of its key)."""

    PLAN = 0
    STEP = 1
    AUGMENT = 2
    GLOBAL = 3


def keyed_seed(seed: int, draw: Draw, epoch: int, step: int = 0, rank: int = 0, stream: int = 0) -> int:
    """The 64-bit seed of one keyed draw."""
    key = b"%d/%d/%d/%d/%d/%d" % (seed, int(draw), epoch, step, rank, stream)
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def keyed_generator(seed: int, draw: Draw, epoch: int, step: int = 0, rank: int = 0,
                    stream: int = 0) -> torch.Generator:
    """A CPU generator seeded with `keyed_seed` of the same key."""
    return torch.Generator().manual_seed(keyed_seed(seed, draw, epoch, step, rank, stream))


def seed_global(seed: int, epoch: int, step: int, rank: int, device: torch.device) -> None:
    """Reseed torch's global generators of the CPU and of `device` (when it is a CUDA one)
    with the GLOBAL key of a step (torch.manual_seed would seed every device, and costs a
    hundred times more)."""
    value = keyed_seed(seed, Draw.GLOBAL, epoch, step, rank)
    torch.default_generator.manual_seed(value)
    if device.type == "cuda":
        torch.cuda.manual_seed(value)
