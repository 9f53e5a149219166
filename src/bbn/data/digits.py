"""scikit-learn's digits as a data source: the demo's data, shipped with scikit-learn."""

from __future__ import annotations

import numpy as np
import torch

from bbn.config import DataConfig
from bbn.data.registry import IN_MEMORY_READS, SOURCES
from bbn.data.sources import LabeledImages, Splits, shuffled_per_class
from bbn.errors import BBNError

# scikit-learn's digits: 1,797 8x8 images with values 0..16, about 180 per class.
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3759,)


@SOURCES.register("digits", reads={"data.test_per_class", *IN_MEMORY_READS})
def load_digits(cfg: DataConfig) -> Splits:
    """scikit-learn's digits, shipped with the package: no download.

    A seeded, balanced test split of `test_per_class` images per class is held out; the
    rest is the training pool. Pixels are scaled from 0..16 to 0..255.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    images = torch.from_numpy(pixels).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    names = [str(n) for n in bunch.target_names]
    counts = torch.bincount(labels, minlength=len(names))
    if int(counts.min()) <= cfg.test_per_class:
        raise BBNError(
            f"data.test_per_class={cfg.test_per_class} leaves no training images for some digit "
            f"class (smallest class has {int(counts.min())}); use a value below {int(counts.min())}"
        )
    test_idx = [int(i) for idx in shuffled_per_class(bunch.target, len(names), cfg.subset_seed)
                for i in idx[: cfg.test_per_class]]
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[torch.tensor(sorted(test_idx))] = True
    everything = LabeledImages(images.contiguous(), labels, names)
    return Splits(
        train=everything.subset(torch.nonzero(~is_test).flatten()),
        test=everything.subset(torch.nonzero(is_test).flatten()),
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
    )
