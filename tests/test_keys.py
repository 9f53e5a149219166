"""bbn.engine.keys: every training draw keyed by (seed, what for, epoch, step, rank, stream)."""

from __future__ import annotations

import itertools

import torch

from bbn.engine.keys import Draw, keyed_generator, keyed_seed, seed_global


def test_every_part_of_the_key_gives_another_seed() -> None:
    keys = list(itertools.product((0, 1), Draw, (1, 2), (0, 1), (0, 1), (0, 1)))
    seeds = {keyed_seed(*key) for key in keys}
    assert len(seeds) == len(keys)
    assert all(0 <= s < 2**64 for s in seeds)


def test_a_key_repeats_its_draws() -> None:
    a = torch.rand(5, generator=keyed_generator(3, Draw.STEP, 4, 7))
    b = torch.rand(5, generator=keyed_generator(3, Draw.STEP, 4, 7))
    c = torch.rand(5, generator=keyed_generator(3, Draw.STEP, 4, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_seed_global_sets_the_cpu_generator_from_the_key() -> None:
    seed_global(5, 2, 3, 1, torch.device("cpu"))
    a = torch.rand(4)
    expected = torch.rand(4, generator=torch.Generator().manual_seed(keyed_seed(5, Draw.GLOBAL, 2, 3, 1)))
    seed_global(5, 2, 3, 1, torch.device("cpu"))
    assert torch.equal(a, torch.rand(4)) and torch.equal(a, expected)
