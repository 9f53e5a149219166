"""Data-parallel training across processes started by torchrun (one or many nodes).

How a run is split (the global recipe does not depend on the number of processes):
* `train.batch_size` is the global batch: each of the W ranks trains on a 1/W share of
  every step's batch, so the learning-rate schedule and the epoch length stay the paper's.
* Every rank draws the epoch's index batches from the same keyed generator (bbn.engine.keys),
  so all ranks hold the same uniform permutation and the same re-balancing draws; rank r
  keeps the r-th share of each (`World.shard`). The ranks' shares are disjoint and together
  they are exactly the batches a single process would train on.
* A step's own draws (Mixup's lambda, a stochastic alpha) are the same on every rank; what
  is random per image (crops, flips) is keyed by the rank too.
* Gradients are averaged by DistributedDataParallel; `train.sync_bn` makes BatchNorm use
  statistics over the whole global batch (CUDA only); otherwise each rank normalises its
  share, as the reference's DataParallel did per GPU.
* Rank 0 alone evaluates, logs and writes the run folder; the others wait for it.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from bbn.errors import BBNError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes, and what they do together. For a
    single process every collective is the identity, so a caller never branches on it."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """This rank's share of a step's index tensors: the r-th of W near-equal contiguous
        pieces of each stream."""
        if not self.distributed:
            return batch
        return tuple(torch.tensor_split(idx, self.size)[self.rank] for idx in batch)

    def agree(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank (a stop request)."""
        if not self.distributed:
            return flag
        out = torch.tensor([float(flag)])
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return bool(out.item() > 0)

    def all_true(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on every rank (a step all may apply)."""
        return not self.agree(not flag)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum of `values` over the ranks (itself for a single process)."""
        if not self.distributed:
            return values
        out = values.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of `values` over the ranks."""
        return self.sum(values) / self.size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def step_module(self, model: nn.Module, sync_bn: bool, device: torch.device) -> nn.Module:
        """The module that runs a method's step on `model`: `MethodStep(model)`, under
        DistributedDataParallel for several processes (SyncBatchNorm first when asked)."""
        if not self.distributed:
            return MethodStep(model)
        if sync_bn:
            if device.type != "cuda":
                raise BBNError("train.sync_bn needs CUDA devices (BatchNorm statistics are synchronised over "
                               "NCCL); set train.sync_bn=false on CPU")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # device_ids=None: the model already sits on this rank's device, and the step's
        # arguments (method, batch, context) are not to be moved.
        return nn.parallel.DistributedDataParallel(MethodStep(model), device_ids=None)


SINGLE = World()


def world_from_env(env: dict[str, str] | None = None) -> World:
    """The World that torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK); a single process when they are absent."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return SINGLE
    try:
        world = World(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    except ValueError:
        raise BBNError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; start distributed runs with torchrun") from None
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise BBNError(f"RANK {world.rank} is outside [0, WORLD_SIZE={world.size}); start distributed runs with torchrun")
    return world


def init_world(device_name: str) -> tuple[World, str]:
    """Join the process group torchrun set up and return this process's World and the device
    it trains on ('cuda:LOCAL_RANK' when CUDA is used). Gloo carries the small CPU tensors
    the ranks agree on (stop requests, counts); NCCL the CUDA gradients."""
    from bbn.devices import resolve_device

    world = world_from_env()
    if not world.distributed:
        return world, device_name
    use_cuda = resolve_device(device_name).type == "cuda"
    if use_cuda:
        if world.local_rank >= torch.cuda.device_count():
            raise BBNError(f"rank {world.rank} needs CUDA device {world.local_rank}, which this node does not have; "
                           "start at most one process per GPU (torchrun --nproc-per-node)")
        torch.cuda.set_device(world.local_rank)
        device_name = f"cuda:{world.local_rank}"
    else:
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2))
    return world, device_name


def close_world(world: World) -> None:
    """Leave the process group (a no-op for a single process)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_size: int, world: World) -> None:
    """The global batch must split evenly across the ranks."""
    if batch_size % world.size:
        raise BBNError(f"train.batch_size={batch_size} does not split across {world.size} processes; "
                       f"use a multiple of {world.size} (it is the global batch)")


class MethodStep(nn.Module):
    """The model wrapped so that one call runs a method's whole step: DistributedDataParallel
    synchronises gradients of what happens inside a forward call, and a method's step calls
    the model's parts (`features`, `logits`) rather than its forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, method: Any, batch: Any, ctx: Any) -> Any:
        return method.step(self.model, batch, ctx)
