"""Samplers (SPEC §1-§2): uniform, reversed, balanced, square-root, progressively balanced,
and BBN's pairing of the two branches.

A sampler needs only the training labels and a generator: it returns index tensors (on the
CPU, they are tiny), never images, and nothing loops over samples in Python. A method owns
its samplers and turns them into an epoch's plan: per step, one index tensor per stream
(BBN: the uniform stream c, then the re-balancing stream r). A re-balancing sampler is
told the 1-based epoch of every draw, so one whose class probabilities move with training
(e.g. a progressively balanced one) fits the same interface.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch

from bbn.errors import BBNError
from bbn.registry import Registry


def reversed_class_probs(counts: list[int] | torch.Tensor) -> torch.Tensor:
    """P_i = w_i / sum_j w_j with w_i = N_max / N_i (SPEC §1, the reversed sampler)."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    if bool((n <= 0).any()):
        raise BBNError("the reversed sampler needs N_i >= 1 for every class (w_i = N_max/N_i)")
    w = n.max() / n
    return w / w.sum()


def instance_class_probs(counts: list[int] | torch.Tensor) -> torch.Tensor:
    """P_i = N_i / sum_j N_j: the natural distribution (every image equally likely)."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    return n / n.sum()


def sqrt_class_probs(counts: list[int] | torch.Tensor) -> torch.Tensor:
    """P_i = N_i^(1/2) / sum_j N_j^(1/2): square-root sampling (Decoupling, Kang et al. 2020)."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    if bool((n <= 0).any()):
        raise BBNError("square-root sampling needs N_i >= 1 for every class")
    return n.sqrt() / n.sqrt().sum()


def progressive_class_probs(counts: list[int] | torch.Tensor, epoch: int, epochs: int) -> torch.Tensor:
    """P_i(t) = (1 - t/T) N_i / sum_j N_j + (t/T) / C with t = epoch - 1 and T = epochs:
    progressively balanced sampling (Decoupling, Kang et al. 2020), from the natural
    distribution at the first epoch towards class-balanced ones."""
    share = (epoch - 1) / epochs
    return (1.0 - share) * instance_class_probs(counts) + share * balanced_class_probs(counts)


def balanced_class_probs(counts: list[int] | torch.Tensor) -> torch.Tensor:
    """P_i = 1/C over the classes that have images (class-balanced sampling)."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    if bool((n <= 0).any()):
        raise BBNError("class-balanced sampling needs N_i >= 1 for every class")
    return torch.full_like(n, 1.0 / len(n))


Plan = list[tuple[torch.Tensor, ...]]
"""An epoch's steps, each as its index tensors, one per stream (c, then r for paired methods)."""


class RebalanceSampler(Protocol):
    """Draws `n` image indices for the 1-based `epoch` from `generator` (with replacement)."""

    def draw(self, n: int, epoch: int, generator: torch.Generator) -> torch.Tensor: ...


class ClassSampler:
    """Draw a class from `class_probs`, then an image of that class uniformly (with replacement)."""

    def __init__(self, labels: torch.Tensor, class_probs: torch.Tensor) -> None:
        labels = labels.cpu()
        self.class_probs = class_probs.to(torch.float64)
        self.order = torch.argsort(labels, stable=True)  # image ids grouped by class
        counts = torch.bincount(labels, minlength=len(class_probs))
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts

    def probs_at(self, epoch: int) -> torch.Tensor:
        """The class probabilities of `epoch` (fixed here; a subclass may move them)."""
        return self.class_probs

    def draw(self, n: int, epoch: int, generator: torch.Generator) -> torch.Tensor:
        classes = torch.multinomial(self.probs_at(epoch), n, replacement=True, generator=generator)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        offset = (u * self.counts[classes]).long().clamp_max(self.counts[classes] - 1)
        return self.order[self.starts[classes] + offset]


class ProgressiveSampler(ClassSampler):
    """A ClassSampler whose class probabilities move with the epoch (`progressive_class_probs`)."""

    def __init__(self, labels: torch.Tensor, num_classes: int, epochs: int) -> None:
        counts = _counts(labels, num_classes)
        balanced_class_probs(counts)  # refuses an empty class
        super().__init__(labels, instance_class_probs(counts))
        self.epochs = epochs

    def probs_at(self, epoch: int) -> torch.Tensor:
        return progressive_class_probs(self.counts, epoch, self.epochs)


class InstanceSampler:
    """Every image equally likely, with replacement (the 'uniform' re-balancing option)."""

    def __init__(self, labels: torch.Tensor) -> None:
        self.n = int(labels.shape[0])

    def draw(self, n: int, epoch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.n, (n,), generator=generator)


def _counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(labels.cpu(), minlength=num_classes)


# name -> factory (labels, num_classes, epochs of the schedule) -> sampler
REBALANCE_SAMPLERS: Registry[Callable[[torch.Tensor, int, int], RebalanceSampler]] = Registry(
    "re-balancing sampler"
)


@REBALANCE_SAMPLERS.register("reversed")
def reversed_sampler(labels: torch.Tensor, num_classes: int, epochs: int) -> ClassSampler:
    return ClassSampler(labels, reversed_class_probs(_counts(labels, num_classes)))


@REBALANCE_SAMPLERS.register("balanced")
def balanced_sampler(labels: torch.Tensor, num_classes: int, epochs: int) -> ClassSampler:
    return ClassSampler(labels, balanced_class_probs(_counts(labels, num_classes)))


@REBALANCE_SAMPLERS.register("sqrt")
def sqrt_sampler(labels: torch.Tensor, num_classes: int, epochs: int) -> ClassSampler:
    return ClassSampler(labels, sqrt_class_probs(_counts(labels, num_classes)))


@REBALANCE_SAMPLERS.register("progressive")
def progressive_sampler(labels: torch.Tensor, num_classes: int, epochs: int) -> ProgressiveSampler:
    return ProgressiveSampler(labels, num_classes, epochs)


@REBALANCE_SAMPLERS.register("uniform")
def uniform_sampler(labels: torch.Tensor, num_classes: int, epochs: int) -> InstanceSampler:
    return InstanceSampler(labels)


def drawn_batches(sampler: RebalanceSampler, steps: int, batch_size: int, epoch: int,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """An epoch of `steps` batches drawn from a re-balancing sampler (e.g. as many as the
    uniform epoch has, so a re-sampled epoch costs the same number of steps)."""
    return list(sampler.draw(steps * batch_size, epoch, generator).split(batch_size))


class UniformSampler:
    """Each image once per epoch in a fresh seeded permutation, cut into batches."""

    def __init__(self, num_samples: int, batch_size: int, drop_last: bool = True) -> None:
        if num_samples == 0:
            raise BBNError("the training set is empty; check data.source and the long-tail settings")
        if drop_last and num_samples < batch_size:
            raise BBNError(
                f"train.batch_size={batch_size} is larger than the training set ({num_samples} images) "
                f"with drop_last; lower train.batch_size or set train.drop_last=false"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def epoch(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        perm = torch.randperm(self.num_samples, generator=generator)
        for step in range(len(self)):
            yield perm[step * self.batch_size : (step + 1) * self.batch_size]


class BBNPairSampler:
    """One re-balancing sample per uniform sample (SPEC §1): yields (idx_c, idx_r) per step.

    The epoch's uniform permutation and all its re-balancing draws come from the same
    generator, in that order, so a run is reproducible from the generator state at the
    start of the epoch.
    """

    def __init__(self, uniform: UniformSampler, rebalance: RebalanceSampler) -> None:
        self.uniform = uniform
        self.rebalance = rebalance

    def __len__(self) -> int:
        return len(self.uniform)

    def plan(self, epoch: int, generator: torch.Generator) -> Plan:
        """The 1-based `epoch`'s steps as (idx_c, idx_r) pairs of equal size."""
        batches = list(self.uniform.epoch(generator))
        drawn = self.rebalance.draw(sum(len(b) for b in batches), epoch, generator)
        return list(zip(batches, drawn.split([len(b) for b in batches])))
