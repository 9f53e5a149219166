"""A small, valid .npz for the arrays source, and one with chosen keys changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

NAMES = ["ant", "bee", "cat", "dog"]
TRAIN_COUNTS = [24, 12, 6, 3]  # a long tail already: train it with data.profile=none
TEST_PER_CLASS = 4
SIDE = 8


def class_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """Float images in [0, 1], (N, H, W, 3): noise plus a bright column pair per class, so a
    small network can learn them."""
    rng = np.random.default_rng(seed)
    x = rng.random((len(labels), SIDE, SIDE, 3)).astype(np.float32) * 0.3
    for i, label in enumerate(labels):
        x[i, :, 2 * label:2 * label + 2, :] += 0.7
    return x


def valid_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    y_train = np.repeat(np.arange(len(NAMES)), TRAIN_COUNTS).astype(np.int64)
    y_test = np.repeat(np.arange(len(NAMES)), TEST_PER_CLASS).astype(np.int64)
    return {
        "x_train": class_images(y_train, seed), "y_train": y_train,
        "x_test": class_images(y_test, seed + 1), "y_test": y_test,
        "class_names": np.array(NAMES),
    }


def write_arrays(path: Path, **changes: Any) -> Path:
    """Write the valid arrays to `path` with `changes` applied (a value of None drops the key).

    Object arrays are stored as numpy.savez stores them (pickled), which the loader refuses.
    """
    arrays: dict[str, Any] = valid_arrays()
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


# Overrides that train on the file as it is (its own long tail), small and fast.
ARRAYS_TRAIN = ["data.source=arrays", "data.profile=none", "data.imbalance_ratio=1", "augment.crop_padding=1",
                "train.batch_size=8", "train.milestones=[]", "train.warmup_epochs=0",
                "train.tensorboard=false", "train.threads=1"]
