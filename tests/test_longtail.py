"""Long-tailed subsets (SPEC §4): exp / step / none profiles, make_longtail, shot groups."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_format import CIFAR10_NAMES, CIFAR100_FINE_NAMES, write_cifar10, write_cifar100

from bbn.config import DataConfig
from bbn.data.longtail import check_trainable, longtail_counts, make_longtail
from bbn.engine.metrics import shot_group, shot_groups
from bbn.data.sources import LabeledImages, load_source
from bbn.errors import BBNError

# SPEC §4: train sizes and tail-class sizes of the long-tailed CIFARs.
C10_SIZES = {100: 12_406, 50: 13_996, 10: 20_431}
C100_SIZES = {100: 10_847, 50: 12_608, 10: 19_573}
C10_TAIL = {100: 50, 50: 100, 10: 500}
C100_TAIL = {100: 5, 50: 10, 10: 50}


# ---------------------------------------------------------------- longtail_counts


@pytest.mark.parametrize("ir", [100, 50, 10])
def test_exp_counts_cifar10(ir: int) -> None:
    counts = longtail_counts(5000, 10, ir, "exp")
    assert len(counts) == 10
    assert sum(counts) == C10_SIZES[ir]
    assert counts[0] == 5000
    assert counts[-1] == int(5000 / ir) == C10_TAIL[ir]
    assert all(isinstance(n, int) for n in counts)
    assert all(a >= b for a, b in zip(counts, counts[1:]))  # head to tail, non-increasing


@pytest.mark.parametrize("ir", [100, 50, 10])
def test_exp_counts_cifar100(ir: int) -> None:
    counts = longtail_counts(500, 100, ir, "exp")
    assert len(counts) == 100
    assert sum(counts) == C100_SIZES[ir]
    assert counts[0] == 500
    assert counts[-1] == int(500 / ir) == C100_TAIL[ir]
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_exp_counts_follow_the_formula() -> None:
    # n_i = int(n_max * (1/IR)^(i/(C-1))), spot-checked against hand-computed values
    counts = longtail_counts(5000, 10, 100, "exp")
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.parametrize("ir", [100, 10, 2.5])
def test_step_profile(ir: float) -> None:
    counts = longtail_counts(5000, 10, ir, "step")
    assert counts == [5000] * 5 + [int(5000 / ir)] * 5
    counts = longtail_counts(500, 100, ir, "step")
    assert counts == [500] * 50 + [int(500 / ir)] * 50


def test_step_profile_odd_class_count_has_one_count_per_class() -> None:
    counts = longtail_counts(100, 5, 10, "step")
    assert len(counts) == 5
    assert counts[0] == 100 and counts[-1] == 10


def test_none_profile_is_balanced() -> None:
    assert longtail_counts(5000, 10, 100, "none") == [5000] * 10
    assert longtail_counts(500, 100, 1, "none") == [500] * 100


def test_ir_one_is_balanced_for_every_profile() -> None:
    for profile in ("exp", "step", "none"):
        assert longtail_counts(300, 7, 1, profile) == [300] * 7


@pytest.mark.parametrize("ir", [0.99, 0.5, 0, -3])
def test_ir_below_one_raises(ir: float) -> None:
    for profile in ("exp", "step", "none"):
        with pytest.raises(BBNError, match="imbalance ratio"):
            longtail_counts(5000, 10, ir, profile)


def test_unknown_profile_raises() -> None:
    with pytest.raises(BBNError, match="exponential|exp"):
        longtail_counts(5000, 10, 100, "exponential")


# ---------------------------------------------------------------- make_longtail on CIFAR fixtures


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, images_per_class_train=5000, images_per_class_test=1, seed=1)
    write_cifar100(root, images_per_class_train=500, images_per_class_test=1, seed=2)
    return root


def _full_train(root: Path, source: str, per_class: int, names: list[str]) -> LabeledImages:
    """The fixture's whole training set, read back through the source (50,000 images)."""
    train = load_source(DataConfig(source=source, root=str(root))).train
    assert len(train) == 50_000 and train.class_counts() == [per_class] * len(names)
    assert train.class_names == names
    return train


@pytest.fixture(scope="module")
def c10(cifar_root: Path) -> LabeledImages:
    return _full_train(cifar_root, "cifar10", 5000, CIFAR10_NAMES)


@pytest.fixture(scope="module")
def c100(cifar_root: Path) -> LabeledImages:
    return _full_train(cifar_root, "cifar100", 500, CIFAR100_FINE_NAMES)


def _keys(data: LabeledImages) -> list[bytes]:
    """One key per image: its pixels (the fixture's random images are all distinct)."""
    flat = data.images.reshape(len(data), -1).numpy()
    return [row.tobytes() for row in flat]


@pytest.fixture(scope="module")
def c10_index(c10: LabeledImages) -> dict[bytes, int]:
    keys = _keys(c10)
    index = {k: i for i, k in enumerate(keys)}
    assert len(index) == len(keys)  # the source images are distinct
    return index


@pytest.mark.parametrize("ir", [100, 10])
def test_make_longtail_cifar10_sizes(c10: LabeledImages, ir: int) -> None:
    lt = make_longtail(c10, ir, "exp", seed=0)
    assert len(lt) == C10_SIZES[ir]
    assert lt.class_counts() == longtail_counts(5000, 10, ir, "exp")
    assert lt.class_names == CIFAR10_NAMES
    assert lt.images.dtype == torch.uint8 and lt.images.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("ir", [100, 50])
def test_make_longtail_cifar100_sizes(c100: LabeledImages, ir: int) -> None:
    lt = make_longtail(c100, ir, "exp", seed=0)
    assert len(lt) == C100_SIZES[ir]
    counts = lt.class_counts()
    assert counts == longtail_counts(500, 100, ir, "exp")
    assert counts[0] == 500 and counts[-1] == C100_TAIL[ir]


def test_make_longtail_step_and_none(c10: LabeledImages) -> None:
    step = make_longtail(c10, 10, "step", seed=0)
    assert step.class_counts() == [5000] * 5 + [500] * 5
    full = make_longtail(c10, 100, "none", seed=0)
    assert full.class_counts() == [5000] * 10
    assert sorted(_keys(full)) == sorted(_keys(c10))  # "none" keeps every image


def test_make_longtail_is_a_subset_without_duplicates(
    c10: LabeledImages, c10_index: dict[bytes, int]
) -> None:
    lt = make_longtail(c10, 100, "exp", seed=3)
    keys = _keys(lt)
    assert len(set(keys)) == len(keys)  # no image kept twice
    src = [c10_index[k] for k in keys]  # KeyError if an image is not from the source
    # each kept image keeps its own label
    assert torch.equal(lt.labels, c10.labels[torch.tensor(src)])


def test_make_longtail_matches_the_reference_per_class_shuffle(
    c10: LabeledImages, c10_index: dict[bytes, int]
) -> None:
    # LDAM-DRW / BBN: np.random.seed(seed); per class in order, shuffle its indices and keep
    # the first n_i; the subset is concatenated class by class.
    seed, ir = 0, 50
    np_labels = c10.labels.numpy()
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        expected = []
        for c, n_c in enumerate(longtail_counts(5000, 10, ir, "exp")):
            idx = np.where(np_labels == c)[0]
            np.random.shuffle(idx)
            expected.extend(idx[:n_c].tolist())
    finally:
        np.random.set_state(state)
    lt = make_longtail(c10, ir, "exp", seed=seed)
    assert [c10_index[k] for k in _keys(lt)] == expected


def test_make_longtail_deterministic_per_seed(c100: LabeledImages) -> None:
    a = make_longtail(c100, 100, "exp", seed=7)
    b = make_longtail(c100, 100, "exp", seed=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = make_longtail(c100, 100, "exp", seed=8)
    assert c.class_counts() == a.class_counts()  # same sizes ...
    assert not torch.equal(a.images, c.images)  # ... different images
    # within a (non-full) class the chosen images differ between seeds
    tail_a = set(_keys(a.subset(torch.nonzero(a.labels == 99).flatten())))
    tail_c = set(_keys(c.subset(torch.nonzero(c.labels == 99).flatten())))
    assert len(tail_a) == len(tail_c) == 5 and tail_a != tail_c


def test_make_longtail_source_does_not_change(c10: LabeledImages) -> None:
    before = c10.labels.clone()
    make_longtail(c10, 100, "exp", seed=0)
    assert torch.equal(c10.labels, before)
    assert c10.class_counts() == [5000] * 10


def _small(counts: list[int], names: list[str]) -> LabeledImages:
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    images = torch.arange(len(labels), dtype=torch.int64).remainder(256).to(torch.uint8)
    return LabeledImages(images.view(-1, 1, 1, 1).repeat(1, 1, 2, 2), labels, names)


def test_make_longtail_empty_source_class_raises_naming_it() -> None:
    data = _small([4, 4, 0, 4], ["cat", "dog", "emu", "fox"])
    with pytest.raises(BBNError, match=r"class 2 \('emu'\)") as info:
        make_longtail(data, 2, "exp", seed=0)
    assert "\n" not in str(info.value)


def test_make_longtail_ir_below_one_raises() -> None:
    data = _small([4, 4], ["a", "b"])
    with pytest.raises(BBNError):
        make_longtail(data, 0.5, "exp", seed=0)


def test_make_longtail_small_source_uses_smallest_class_as_n_max() -> None:
    data = _small([20, 10, 30], ["a", "b", "c"])
    lt = make_longtail(data, 10, "exp", seed=0)
    assert lt.class_counts() == longtail_counts(10, 3, 10, "exp") == [10, 3, 1]


# ---------------------------------------------------------------- shot groups


@pytest.mark.parametrize(
    ("count", "group"),
    [(5000, "many"), (101, "many"), (100, "medium"), (50, "medium"), (20, "medium"),
     (19, "few"), (1, "few"), (0, "few")],
)
def test_shot_group_boundaries(count: int, group: str) -> None:
    assert shot_group(count) == group


def test_shot_groups_on_a_list() -> None:
    counts = [5000, 101, 100, 20, 19, 5]
    assert shot_groups(counts) == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
    assert shot_groups([]) == {"many": [], "medium": [], "few": []}


def test_shot_groups_cifar100_ir100() -> None:
    counts = longtail_counts(500, 100, 100, "exp")
    groups = shot_groups(counts)
    assert sorted(groups["many"] + groups["medium"] + groups["few"]) == list(range(100))
    assert all(counts[c] > 100 for c in groups["many"])
    assert all(20 <= counts[c] <= 100 for c in groups["medium"])
    assert all(counts[c] < 20 for c in groups["few"])
    # head classes come first: the groups are contiguous ranges, many -> medium -> few
    assert groups["many"] == list(range(len(groups["many"])))
    assert groups["few"] == list(range(100 - len(groups["few"]), 100))


def test_check_trainable() -> None:
    check_trainable([5, 1, 3], ["a", "b", "c"])  # no error
    with pytest.raises(BBNError, match=re.escape("class 1 ('bird')")) as info:
        check_trainable([5, 0, 3, 0], ["plane", "bird", "cat", "dog"])
    msg = str(info.value)
    assert "2 empty" in msg
    assert "\n" not in msg
