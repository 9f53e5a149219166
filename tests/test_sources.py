"""Data sources: scikit-learn's digits (no download) and the LabeledImages container."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

from bbn.config import DataConfig
from bbn.data.digits import DIGITS_MEAN, DIGITS_STD
from bbn.data.sources import SOURCES, LabeledImages, Splits, load_source
from bbn.errors import BBNError

N_DIGITS = 1797


@pytest.fixture(scope="module")
def sk_digits():
    return sk_load_digits()


def digits(**kw: object) -> Splits:
    return load_source(DataConfig(source="digits", **kw))


def keys(data: LabeledImages) -> Counter:
    """Multiset of (pixels, label) pairs."""
    flat = data.images.reshape(len(data), -1).numpy()
    return Counter((row.tobytes(), int(y)) for row, y in zip(flat, data.labels.tolist()))


# ---------------------------------------------------------------- digits


def test_digits_registered() -> None:
    assert "digits" in SOURCES
    assert SOURCES.get("digits") is not None


@pytest.mark.parametrize("k", [1, 10, 50])
def test_digits_shapes_and_split(k: int) -> None:
    s = digits(test_per_class=k)
    for part in (s.train, s.test):
        assert part.images.dtype == torch.uint8
        assert part.images.dim() == 4 and part.images.shape[1:] == (1, 8, 8)
        assert part.labels.dtype == torch.int64
        assert part.class_names == [str(i) for i in range(10)]
        assert part.num_classes == 10
    assert len(s.test) == 10 * k
    assert s.test.class_counts() == [k] * 10
    assert len(s.train) + len(s.test) == N_DIGITS
    assert s.mean == DIGITS_MEAN and s.std == DIGITS_STD


def test_digits_train_and_test_partition_the_dataset(sk_digits) -> None:
    s = digits(test_per_class=20)
    pixels = np.round(sk_digits.images * (255.0 / 16.0)).astype(np.uint8)
    everything = LabeledImages(torch.from_numpy(pixels).unsqueeze(1),
                               torch.from_numpy(sk_digits.target.astype(np.int64)),
                               [str(i) for i in range(10)])
    # union with multiplicity == the whole dataset: disjoint, nothing lost, labels kept
    assert keys(s.train) + keys(s.test) == keys(everything)
    # per class: train = all of that class minus the test ones
    full = np.bincount(sk_digits.target, minlength=10)
    assert s.train.class_counts() == (full - 20).tolist()


def test_digits_pixel_scaling(sk_digits) -> None:
    s = digits(test_per_class=5)
    values = torch.cat([s.train.images.flatten(), s.test.images.flatten()])
    assert int(values.min()) == 0 and int(values.max()) == 255
    # 0..16 mapped to round(v * 255 / 16)
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.unique(values).tolist()) <= allowed


def test_digits_split_is_seeded() -> None:
    a = digits(test_per_class=30, subset_seed=0)
    b = digits(test_per_class=30, subset_seed=0)
    c = digits(test_per_class=30, subset_seed=1)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert torch.equal(a.train.images, b.train.images)
    assert keys(a.test) != keys(c.test)
    assert c.test.class_counts() == [30] * 10


def test_digits_too_large_test_split_raises(sk_digits) -> None:
    smallest = int(np.bincount(sk_digits.target).min())  # 174
    digits(test_per_class=smallest - 1)  # leaves one training image for that class
    for k in (smallest, 1000):
        with pytest.raises(BBNError, match="test_per_class") as info:
            digits(test_per_class=k)
        assert str(smallest) in str(info.value)
        assert "\n" not in str(info.value)


def test_digits_mean_std_match_the_pixels(sk_digits) -> None:
    x = sk_digits.images / 16.0  # all 1,797 images, 0..1
    assert x.shape[0] == N_DIGITS
    assert abs(DIGITS_MEAN[0] - x.mean()) < 0.002
    assert abs(DIGITS_STD[0] - x.std()) < 0.002
    # and of the uint8 images the source returns, scaled to 0..1
    s = digits(test_per_class=5)
    u = torch.cat([s.train.images, s.test.images]).double() / 255.0
    assert abs(DIGITS_MEAN[0] - float(u.mean())) < 0.002
    assert abs(DIGITS_STD[0] - float(u.std(unbiased=False))) < 0.002


def test_unknown_source_suggests_closest() -> None:
    with pytest.raises(BBNError, match="did you mean 'digits'"):
        load_source(DataConfig(source="digit"))


# ---------------------------------------------------------------- LabeledImages


def imgs(n: int, c: int = 1) -> torch.Tensor:
    return torch.arange(n * c * 4, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, c, 2, 2)


@pytest.mark.parametrize("bad", [3, 7, -1])
def test_label_out_of_range_raises_naming_it(bad: int) -> None:
    labels = torch.tensor([0, 1, bad, 2], dtype=torch.int64)
    with pytest.raises(BBNError, match=rf"label {bad} is outside \[0, 3\)"):
        LabeledImages(imgs(4), labels, ["a", "b", "c"])


def test_wrong_dtypes_and_shapes_raise() -> None:
    labels = torch.tensor([0, 1], dtype=torch.int64)
    with pytest.raises(BBNError, match="uint8"):
        LabeledImages(imgs(2).float(), labels, ["a", "b"])
    with pytest.raises(BBNError, match="uint8"):
        LabeledImages(imgs(2)[:, 0], labels, ["a", "b"])  # 3-D
    with pytest.raises(BBNError, match="int64"):
        LabeledImages(imgs(2), labels.to(torch.int32), ["a", "b"])
    with pytest.raises(BBNError, match="one per image"):
        LabeledImages(imgs(3), labels, ["a", "b"])


def test_empty_dataset_is_valid() -> None:
    empty = LabeledImages(torch.zeros((0, 3, 4, 4), dtype=torch.uint8),
                          torch.zeros(0, dtype=torch.int64), ["a", "b"])
    assert len(empty) == 0
    assert empty.class_counts() == [0, 0]


def test_class_counts_include_empty_classes() -> None:
    data = LabeledImages(imgs(6), torch.tensor([2, 0, 2, 2, 0, 2]), ["a", "b", "c", "d"])
    assert data.class_counts() == [2, 0, 4, 0]
    assert data.num_classes == 4
    assert len(data) == 6


def test_subset() -> None:
    images = imgs(5, 3)
    labels = torch.tensor([0, 1, 2, 1, 0])
    names = ["x", "y", "z"]
    data = LabeledImages(images, labels, names)
    sub = data.subset([4, 1, 1])
    assert torch.equal(sub.images, images[[4, 1, 1]])
    assert torch.equal(sub.labels, torch.tensor([0, 1, 1]))
    assert sub.class_names == names and sub.class_names is not names
    assert sub.class_counts() == [1, 2, 0]
    sub_t = data.subset(torch.tensor([2]))
    assert torch.equal(sub_t.images, images[2:3]) and sub_t.labels.tolist() == [2]
    assert len(data.subset([])) == 0
