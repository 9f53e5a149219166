"""Config -> the long-tailed training set, the test set and the normalisation to use."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from bbn.config import Config
from bbn.data.annotations import check_unused
from bbn.data.longtail import check_trainable, first_per_class, make_longtail
from bbn.data.sources import LabeledImages, Splits, load_source
from bbn.errors import BBNError


def resize(data: LabeledImages, size: int) -> LabeledImages:
    """Bilinear resize of every image to size x size, kept as uint8."""
    if tuple(data.images.shape[2:]) == (size, size):
        return data
    images = F.interpolate(data.images.float(), size=(size, size), mode="bilinear", align_corners=False)
    return replace(data, images=images.round().clamp(0, 255).to(torch.uint8))


def prepare_data(cfg: Config) -> Splits:
    """Load the source, cut the long tail (SPEC §4) and check every class can be trained."""
    splits = load_source(cfg.data)
    train, test = splits.train, splits.test
    if isinstance(train, LabeledImages):  # keys only image-file sources read: refuse, never ignore
        check_unused(cfg.data, cfg.data.source, ("train_file", "test_file", "test_root", "resize_size"))
    for split, part in (("training", train), ("test", test)):
        if len(part) == 0:
            raise BBNError(f"data source '{cfg.data.source}' has no {split} images; check data.root and its files")
    if cfg.data.profile != "none" or cfg.data.imbalance_ratio != 1 or cfg.data.n_max is not None:
        train = make_longtail(train, cfg.data.imbalance_ratio, cfg.data.profile, cfg.data.subset_seed,
                              cfg.data.n_max)
    if cfg.data.test_max_per_class is not None:
        test = first_per_class(test, cfg.data.test_max_per_class)
    if cfg.data.image_size is not None and isinstance(train, LabeledImages):  # files: the crop size
        train, test = resize(train, cfg.data.image_size), resize(test, cfg.data.image_size)
    check_trainable(train.class_counts(), train.class_names)
    channels = train.channels
    mean = tuple(cfg.augment.mean) if cfg.augment.mean is not None else splits.mean
    std = tuple(cfg.augment.std) if cfg.augment.std is not None else splits.std
    for key, vals in (("augment.mean", mean), ("augment.std", std)):
        if len(vals) != channels:
            raise BBNError(f"{key} has {len(vals)} values but the images have {channels} channel(s); give {channels}")
    return Splits(train, test, mean, std)
