"""Samplers (SPEC §1-§2): reversed / balanced / uniform re-balancing, the uniform epoch
sampler and BBN's pairing of the two branches. Distributions are checked with chi-square
goodness-of-fit tests on seeded draws (deterministic, so never flaky)."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from bbn.data.longtail import longtail_counts
from bbn.errors import BBNError
from bbn.samplers import (
    REBALANCE_SAMPLERS,
    BBNPairSampler,
    ClassSampler,
    UniformSampler,
    balanced_class_probs,
    drawn_batches,
    progressive_class_probs,
    sqrt_class_probs,
    reversed_class_probs,
)

C10_IR100 = longtail_counts(5000, 10, 100, "exp")  # 12,406 images
EPOCHS = 200  # the schedule length the factories are told (the samplers here ignore it)


def chi2_bound(dof: int, q: float = 0.999) -> float:
    return float(stats.chi2.ppf(q, dof))


def chi2_stat(observed: torch.Tensor, probs: torch.Tensor) -> float:
    n = observed.sum().item()
    expected = probs.double() * n
    return float(((observed.double() - expected) ** 2 / expected).sum())


def shuffled_labels(counts: list[int], seed: int = 0) -> torch.Tensor:
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- class probabilities


def test_reversed_class_probs_by_hand() -> None:
    counts = [100, 50, 20, 10]
    # w = N_max / N_i = 1, 2, 5, 10; sum 18
    expected = torch.tensor([1 / 18, 2 / 18, 5 / 18, 10 / 18], dtype=torch.float64)
    probs = reversed_class_probs(counts)
    assert probs.dtype == torch.float64
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-15)
    # also as a tensor input, unordered counts
    probs = reversed_class_probs(torch.tensor([10, 100, 50]))
    torch.testing.assert_close(probs, torch.tensor([10, 1, 2], dtype=torch.float64) / 13)


def test_reversed_class_probs_balanced_counts_are_uniform() -> None:
    torch.testing.assert_close(reversed_class_probs([7] * 5), torch.full((5,), 0.2, dtype=torch.float64))


@pytest.mark.parametrize("counts", [[5, 0, 3], [0], [4, -1]])
def test_class_probs_refuse_empty_classes(counts: list[int]) -> None:
    with pytest.raises(BBNError, match="N_i >= 1"):
        reversed_class_probs(counts)
    with pytest.raises(BBNError):
        balanced_class_probs(counts)


def test_balanced_class_probs() -> None:
    torch.testing.assert_close(balanced_class_probs([100, 1, 7, 3]), torch.full((4,), 0.25, dtype=torch.float64))


def test_empty_class_in_labels_refused_by_class_samplers() -> None:
    labels = torch.tensor([0, 0, 2, 2, 2])  # class 1 of 3 empty
    for name in ("reversed", "balanced"):
        with pytest.raises(BBNError):
            REBALANCE_SAMPLERS.get(name)(labels, 3, EPOCHS)


def test_sqrt_class_probs_by_hand() -> None:
    # N = 100, 25, 4: sqrt = 10, 5, 2, sum 17
    probs = sqrt_class_probs([100, 25, 4])
    assert probs.tolist() == pytest.approx([10 / 17, 5 / 17, 2 / 17])
    with pytest.raises(BBNError, match="N_i >= 1"):
        sqrt_class_probs([3, 0])


def test_progressive_class_probs_by_hand() -> None:
    # N = 60, 30, 10 (natural 0.6, 0.3, 0.1), C = 3, T = 4: share t/T with t = epoch - 1
    counts = [60, 30, 10]
    assert progressive_class_probs(counts, 1, 4).tolist() == pytest.approx([0.6, 0.3, 0.1])
    assert progressive_class_probs(counts, 3, 4).tolist() == pytest.approx([0.5 * 0.6 + 0.5 / 3, 0.5 * 0.3 + 0.5 / 3,
                                                                            0.5 * 0.1 + 0.5 / 3])
    assert progressive_class_probs(counts, 4, 4).tolist() == pytest.approx([0.25 * 0.6 + 0.75 / 3,
                                                                            0.25 * 0.3 + 0.75 / 3,
                                                                            0.25 * 0.1 + 0.75 / 3])


@pytest.mark.parametrize("epoch", [1, 101, 200])
def test_sqrt_and_progressive_class_frequencies_chi_square(epoch: int) -> None:
    labels = shuffled_labels(C10_IR100)
    for name, probs in (("sqrt", sqrt_class_probs(C10_IR100)),
                        ("progressive", progressive_class_probs(C10_IR100, epoch, EPOCHS))):
        idx = REBALANCE_SAMPLERS.get(name)(labels, 10, EPOCHS).draw(N_DRAWS, epoch, gen(epoch))
        observed = torch.bincount(labels[idx], minlength=10)
        assert chi2_stat(observed, probs) < chi2_bound(9), (name, epoch, observed.tolist())
        if name == "progressive" and epoch > 1:  # moved away from the natural distribution
            natural = torch.tensor(C10_IR100, dtype=torch.float64) / sum(C10_IR100)
            assert chi2_stat(observed, natural) > 100 * chi2_bound(9)


# ---------------------------------------------------------------- goodness of fit


N_DRAWS = 200_000


@pytest.mark.parametrize("name", ["reversed", "balanced"])
def test_class_frequencies_chi_square(name: str) -> None:
    labels = shuffled_labels(C10_IR100)
    sampler = REBALANCE_SAMPLERS.get(name)(labels, 10, EPOCHS)
    idx = sampler.draw(N_DRAWS, 1, gen(1))
    assert idx.shape == (N_DRAWS,) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < len(labels)
    observed = torch.bincount(labels[idx], minlength=10)
    probs = reversed_class_probs(C10_IR100) if name == "reversed" else torch.full((10,), 0.1)
    stat = chi2_stat(observed, probs)
    assert stat < chi2_bound(9), (stat, observed.tolist())
    # and clearly NOT the natural (instance-uniform) distribution
    natural = torch.tensor(C10_IR100, dtype=torch.float64) / sum(C10_IR100)
    assert chi2_stat(observed, natural) > 100 * chi2_bound(9)


def test_reversed_sampler_favours_the_tail() -> None:
    labels = shuffled_labels(C10_IR100)
    idx = REBALANCE_SAMPLERS.get("reversed")(labels, 10, EPOCHS).draw(50_000, 1, gen(2))
    freq = torch.bincount(labels[idx], minlength=10).tolist()
    assert freq[-1] > freq[0] * 50  # P_9 / P_0 = N_0 / N_9 = 100


@pytest.mark.parametrize("name", ["reversed", "balanced"])
def test_within_class_uniform(name: str) -> None:
    labels = shuffled_labels(C10_IR100, seed=3)
    tail = 9  # 50 images, P_9 ~ 0.4 under "reversed", 0.1 under "balanced"
    members = torch.nonzero(labels == tail).flatten()
    idx = REBALANCE_SAMPLERS.get(name)(labels, 10, EPOCHS).draw(N_DRAWS, 1, gen(4))
    picked = idx[labels[idx] == tail]
    assert len(picked) > 10_000
    # every draw of the class is one of its images, each about equally often
    assert bool(torch.isin(picked, members).all())
    per_image = torch.bincount(picked, minlength=len(labels))[members]
    assert bool((per_image > 0).all())
    stat = chi2_stat(per_image, torch.full((len(members),), 1.0 / len(members)))
    assert stat < chi2_bound(len(members) - 1), stat


def test_within_class_uniform_head_class_all_images_reached() -> None:
    # balanced on a small head class: 200 images, class prob 1/2
    labels = shuffled_labels([200, 5], seed=5)
    members = torch.nonzero(labels == 0).flatten()
    idx = REBALANCE_SAMPLERS.get("balanced")(labels, 2, EPOCHS).draw(N_DRAWS, 1, gen(6))
    per_image = torch.bincount(idx, minlength=len(labels))[members]
    stat = chi2_stat(per_image, torch.full((200,), 1 / 200))
    assert stat < chi2_bound(199), stat


def test_uniform_rebalance_option_is_uniform_over_images() -> None:
    counts = [600, 300, 80, 20]  # 1,000 images
    labels = shuffled_labels(counts, seed=7)
    idx = REBALANCE_SAMPLERS.get("uniform")(labels, 4, EPOCHS).draw(N_DRAWS, 1, gen(8))
    assert idx.shape == (N_DRAWS,)
    per_image = torch.bincount(idx, minlength=1000)
    assert len(per_image) == 1000
    stat = chi2_stat(per_image, torch.full((1000,), 1e-3))
    assert stat < chi2_bound(999), stat
    # so class frequencies follow N_i / N
    per_class = torch.bincount(labels[idx], minlength=4)
    assert chi2_stat(per_class, torch.tensor(counts) / 1000) < chi2_bound(3)


@pytest.mark.parametrize("name", ["reversed", "balanced", "uniform"])
def test_rebalance_draws_are_seeded(name: str) -> None:
    labels = shuffled_labels(C10_IR100)
    sampler = REBALANCE_SAMPLERS.get(name)(labels, 10, EPOCHS)
    a = sampler.draw(1000, 1, gen(11))
    b = sampler.draw(1000, 1, gen(11))
    c = sampler.draw(1000, 1, gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------- UniformSampler


def test_uniform_epoch_drop_last() -> None:
    n, b = 1003, 64
    sampler = UniformSampler(n, b, drop_last=True)
    assert len(sampler) == n // b == 15
    batches = list(sampler.epoch(gen(0)))
    assert len(batches) == 15
    assert all(batch.shape == (b,) for batch in batches)
    seen = torch.cat(batches)
    assert len(torch.unique(seen)) == len(seen) == 15 * b  # all distinct
    assert int(seen.min()) >= 0 and int(seen.max()) < n
    # the dropped tail is the rest of one permutation: n - 15*b images not seen
    assert n - len(seen) == n % b


def test_uniform_epoch_without_drop_last_covers_everything() -> None:
    n, b = 1003, 64
    sampler = UniformSampler(n, b, drop_last=False)
    assert len(sampler) == 16
    batches = list(sampler.epoch(gen(0)))
    assert len(batches) == 16
    assert [len(x) for x in batches] == [64] * 15 + [n - 15 * 64]
    seen = torch.cat(batches)
    assert torch.equal(torch.sort(seen).values, torch.arange(n))


def test_uniform_epoch_exact_multiple() -> None:
    for drop_last in (True, False):
        sampler = UniformSampler(256, 64, drop_last=drop_last)
        seen = torch.cat(list(sampler.epoch(gen(3))))
        assert torch.equal(torch.sort(seen).values, torch.arange(256))


def test_uniform_epoch_is_shuffled_and_seeded() -> None:
    sampler = UniformSampler(500, 50, drop_last=True)
    g = gen(0)
    e1 = torch.cat(list(sampler.epoch(g)))
    e2 = torch.cat(list(sampler.epoch(g)))
    assert not torch.equal(e1, e2)  # a fresh permutation every epoch
    assert not torch.equal(e1, torch.arange(500))  # shuffled
    g2 = gen(0)
    assert torch.equal(torch.cat(list(sampler.epoch(g2))), e1)
    assert torch.equal(torch.cat(list(sampler.epoch(g2))), e2)
    assert not torch.equal(torch.cat(list(sampler.epoch(gen(1)))), e1)


def test_uniform_epoch_position_frequencies_are_uniform() -> None:
    # over many epochs, index 0 lands in every position about equally often
    n = 20
    sampler = UniformSampler(n, n, drop_last=True)
    g = gen(9)
    pos = torch.zeros(n, dtype=torch.int64)
    for _ in range(4000):
        (batch,) = list(sampler.epoch(g))
        pos[int(torch.nonzero(batch == 0))] += 1
    assert chi2_stat(pos, torch.full((n,), 1 / n)) < chi2_bound(n - 1)


def test_uniform_sampler_errors() -> None:
    with pytest.raises(BBNError, match="batch_size"):
        UniformSampler(100, 128, drop_last=True)
    sampler = UniformSampler(100, 128, drop_last=False)  # allowed without drop_last
    (batch,) = list(sampler.epoch(gen(0)))
    assert torch.equal(torch.sort(batch).values, torch.arange(100))
    for drop_last in (True, False):
        with pytest.raises(BBNError, match="empty"):
            UniformSampler(0, 128, drop_last=drop_last)


# ---------------------------------------------------------------- BBNPairSampler


def _pair(labels: torch.Tensor, batch: int, name: str = "reversed") -> BBNPairSampler:
    return BBNPairSampler(UniformSampler(len(labels), batch, drop_last=True),
                          REBALANCE_SAMPLERS.get(name)(labels, int(labels.max()) + 1, EPOCHS))


def test_pair_sampler_shapes_and_uniform_branch() -> None:
    labels = shuffled_labels(C10_IR100)
    pair = _pair(labels, 128)
    assert len(pair) == len(labels) // 128
    steps = pair.plan(1, gen(0))
    assert isinstance(steps, list) and len(steps) == len(pair)
    for step in steps:
        assert isinstance(step, tuple) and len(step) == 2
        idx_c, idx_r = step
        assert idx_c.shape == idx_r.shape == (128,)
        assert idx_c.dtype == idx_r.dtype == torch.int64
    # the conventional branch is exactly the uniform sampler's epoch from the same state
    uniform = list(UniformSampler(len(labels), 128, drop_last=True).epoch(gen(0)))
    assert all(torch.equal(c, u) for (c, _), u in zip(steps, uniform))
    all_c = torch.cat([c for c, _ in steps])
    assert len(torch.unique(all_c)) == len(all_c)


def test_pair_sampler_reversed_branch_frequencies() -> None:
    labels = shuffled_labels(C10_IR100, seed=1)
    pair = _pair(labels, 128)
    g = gen(5)
    drawn = torch.cat([r for e in range(1, 13) for _, r in pair.plan(e, g)])
    assert len(drawn) > 140_000
    observed = torch.bincount(labels[drawn], minlength=10)
    assert chi2_stat(observed, reversed_class_probs(C10_IR100)) < chi2_bound(9)
    # the uniform branch follows the natural distribution instead
    g = gen(5)
    conv = torch.cat([c for e in range(1, 4) for c, _ in pair.plan(e, g)])
    natural = torch.tensor(C10_IR100, dtype=torch.float64) / sum(C10_IR100)
    assert chi2_stat(torch.bincount(labels[conv], minlength=10), natural) < chi2_bound(9)


def test_pair_sampler_reproducible_from_generator_state() -> None:
    labels = shuffled_labels([300, 100, 30, 10], seed=2)
    pair = _pair(labels, 32)
    g = gen(123)
    pair.plan(1, g)  # advance one epoch
    state = g.get_state()
    first = pair.plan(2, g)
    g.set_state(state)
    again = pair.plan(2, g)
    assert len(first) == len(again) == 440 // 32
    for (c1, r1), (c2, r2) in zip(first, again):
        assert torch.equal(c1, c2) and torch.equal(r1, r2)
    nxt = pair.plan(3, g)
    assert not all(torch.equal(r1, r2) for (_, r1), (_, r2) in zip(first, nxt))


def test_pair_sampler_with_uniform_rebalance_option() -> None:
    labels = shuffled_labels([50, 30, 20], seed=4)
    pair = _pair(labels, 10, "uniform")
    for idx_c, idx_r in pair.plan(1, gen(0)):
        assert idx_c.shape == idx_r.shape == (10,)
        assert int(idx_r.min()) >= 0 and int(idx_r.max()) < 100


# ---------------------------------------------------------------- registry


def test_registry_names() -> None:
    assert set(REBALANCE_SAMPLERS.names()) == {"reversed", "balanced", "sqrt", "progressive", "uniform"}
    assert "reversed" in REBALANCE_SAMPLERS and "reverse_x" not in REBALANCE_SAMPLERS


@pytest.mark.parametrize(("typo", "hint"), [("reversd", "reversed"), ("balance", "balanced"),
                                            ("unifrom", "uniform")])
def test_registry_unknown_name_suggests_closest(typo: str, hint: str) -> None:
    with pytest.raises(BBNError) as info:
        REBALANCE_SAMPLERS.get(typo)
    msg = str(info.value)
    assert f"'{typo}'" in msg
    assert f"did you mean '{hint}'" in msg
    for name in ("reversed", "balanced", "uniform"):
        assert name in msg
    assert "\n" not in msg


def test_registry_unknown_far_name_has_no_suggestion() -> None:
    with pytest.raises(BBNError) as info:
        REBALANCE_SAMPLERS.get("zzzzzzzzzz")
    assert "did you mean" not in str(info.value)
    assert "known: reversed, balanced, sqrt, progressive, uniform" in str(info.value)


# ---------------------------------------------------------------- epoch-dependent samplers


class ProgressiveSampler(ClassSampler):
    """Class probabilities moving linearly from the natural distribution (epoch 1) to the
    reversed one (the last epoch): a sampler whose draws depend on the epoch."""

    def __init__(self, labels: torch.Tensor, num_classes: int, epochs: int) -> None:
        counts = torch.bincount(labels, minlength=num_classes).double()
        super().__init__(labels, reversed_class_probs(counts))
        self.natural = counts / counts.sum()
        self.epochs = epochs

    def probs_at(self, epoch: int) -> torch.Tensor:
        t = (epoch - 1) / (self.epochs - 1)
        return (1 - t) * self.natural + t * self.class_probs


PROGRESSIVE_EPOCHS = 5


@pytest.mark.parametrize("epoch", [1, 3, 5])
def test_epoch_dependent_sampler_draws_with_the_epochs_probabilities(epoch: int) -> None:
    labels = shuffled_labels(C10_IR100, seed=12)
    sampler = ProgressiveSampler(labels, 10, PROGRESSIVE_EPOCHS)
    probs = sampler.probs_at(epoch)
    assert probs.sum().item() == pytest.approx(1.0)
    idx = sampler.draw(N_DRAWS, epoch, gen(13))
    observed = torch.bincount(labels[idx], minlength=10)
    assert chi2_stat(observed, probs) < chi2_bound(9)
    for other in {1, 3, 5} - {epoch}:  # and clearly not another epoch's probabilities
        assert chi2_stat(observed, sampler.probs_at(other)) > 100 * chi2_bound(9)

    # drawn_batches hands the epoch on: the batches are one draw of the epoch, cut in steps
    batches = drawn_batches(sampler, 7, 64, epoch, gen(14))
    assert isinstance(batches, list) and [len(b) for b in batches] == [64] * 7
    assert torch.equal(torch.cat(batches), sampler.draw(7 * 64, epoch, gen(14)))

    # so does the pair sampler: the uniform permutation first, then all the epoch's draws
    pair = BBNPairSampler(UniformSampler(len(labels), 128, drop_last=True), sampler)
    steps = pair.plan(epoch, gen(15))
    g = gen(15)
    uniform = list(pair.uniform.epoch(g))
    drawn = sampler.draw(len(pair) * 128, epoch, g)
    assert all(torch.equal(c, u) for (c, _), u in zip(steps, uniform))
    assert torch.equal(torch.cat([r for _, r in steps]), drawn)
    r_classes = torch.bincount(labels[torch.cat([r for e in range(20) for _, r in pair.plan(epoch, gen(16 + e))])],
                               minlength=10)
    assert chi2_stat(r_classes, probs) < chi2_bound(9)


@pytest.mark.parametrize("method_name", ["bbn", "rs"])
def test_methods_plan_with_the_epochs_sampler_probabilities(method_name: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # a registered epoch-dependent sampler is told the epoch a method plans
    from bbn.config import build_config
    from bbn.methods import METHODS

    monkeypatch.setitem(REBALANCE_SAMPLERS._items, "progressive", ProgressiveSampler)
    monkeypatch.setattr("bbn.methods.baselines.Resampling.sampler", lambda self, epoch: "progressive")
    labels = shuffled_labels(C10_IR100, seed=17)
    cfg = build_config({}, ["train.batch_size=128", f"train.epochs={PROGRESSIVE_EPOCHS}",
                            f"method.name={method_name}", "method.rebalance_sampler=progressive"])
    method = METHODS.get(method_name)(cfg, labels, 10)
    reference = ProgressiveSampler(labels, 10, PROGRESSIVE_EPOCHS)
    for epoch in (1, PROGRESSIVE_EPOCHS):
        g = gen(18)
        plan = method.plan(epoch, g)
        drawn = torch.cat([step[-1] for step in plan])  # the re-balancing stream
        observed = torch.bincount(labels[drawn], minlength=10)
        assert chi2_stat(observed, reference.probs_at(epoch)) < chi2_bound(9)
        other = PROGRESSIVE_EPOCHS + 1 - epoch
        assert chi2_stat(observed, reference.probs_at(other)) > 10 * chi2_bound(9)
