"""Checks on a state dict read from a file, run before any network is built from it.

A tensor in a torch file declares its shape and strides apart from the bytes it stores, so
a 2 MB file can declare a 10^8 x 128 classifier (a stride-0 view of one stored value):
building the network for it would allocate 51 GB. Every tensor must therefore hold no more
values than the file stores for it, and a classifier must have at least one class.
"""

from __future__ import annotations

from typing import Mapping

import torch

from bbn.errors import BBNError

# More classes than any long-tailed benchmark (iNaturalist 2018: 8,142; ImageNet-21k:
# 21,841): an imported classifier beyond it is refused unless --num-classes names its size.
MAX_IMPORT_CLASSES = 100_000


def _stored_values(tensor: torch.Tensor) -> int:
    """How many values the file really holds for `tensor` (its storage from its offset on)."""
    return tensor.untyped_storage().nbytes() // tensor.element_size() - tensor.storage_offset()


def check_stored(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse a tensor that declares more values than its file stores (a stride-0 or
    overlapping view that would balloon when the network is built), or that is not dense."""
    for key, tensor in state.items():
        try:
            stored = _stored_values(tensor)
        except (RuntimeError, NotImplementedError):  # sparse and other layouts have no plain storage
            raise BBNError(f"{where}: '{key}' is a {tensor.layout} tensor, not a dense one; "
                           "the file is damaged or not a trained model") from None
        if tensor.numel() > stored:
            raise BBNError(f"{where}: '{key}' declares shape {tuple(tensor.shape)} ({tensor.numel():,} values) "
                           f"but the file stores {max(stored, 0):,}; the file is damaged or crafted, "
                           "use the original checkpoint")


def check_num_classes(classes: int, where: str, limit: int | None = None) -> None:
    """A classifier needs at least one class, and (when `limit` is given) at most `limit`."""
    if classes < 1:
        raise BBNError(f"{where}: its classifier has {classes} classes; it is not a trained classifier, "
                       "use a checkpoint of a model trained on at least 2 classes")
    if limit is not None and classes > limit:
        raise BBNError(f"{where}: its classifier declares {classes:,} classes, more than the {limit:,} "
                       f"bbn accepts unchecked; if the model really has them, pass --num-classes {classes}")
