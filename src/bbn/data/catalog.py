"""Every data source, imported in this one place so each registers in SOURCES
(bbn.data.registry); bbn.data imports this module, so importing any part of bbn.data
gives the complete registry."""

from __future__ import annotations

from bbn.data import digits  # noqa: F401, I001  (first: the registry lists the built-in demo first)
from bbn.data import arrays, cifar, folder, inat, lists  # noqa: F401  (each registers its sources)
from bbn.data.registry import SOURCES

__all__ = ["SOURCES"]
