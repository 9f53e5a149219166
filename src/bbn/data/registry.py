"""The data-source registry: name -> loader(DataConfig) -> Splits. Each source module
registers its loaders here; bbn.data.catalog imports every source module (the one place where
registration happens), and importing bbn.data runs it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from bbn.registry import Registry

if TYPE_CHECKING:
    from bbn.config import DataConfig
    from bbn.data.sources import Splits

SOURCES: Registry[Callable[["DataConfig"], "Splits"]] = Registry("data source")

# The data keys a source reads beyond the ones every source reads (data.source, profile,
# imbalance_ratio, subset_seed, n_max, test_max_per_class, image_size): each source declares
# them when it registers, so a key the chosen source would ignore is refused.
IN_MEMORY_READS = frozenset({"augment.crop_padding"})  # the padded random crop of in-memory images
FILE_READS = frozenset({"data.root", "data.resize_size", "data.workers", "data.strict"})  # decoded files
ANNOTATION_READS = FILE_READS | {"data.train_file", "data.test_file"}  # files listed in annotation files
