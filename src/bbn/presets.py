"""The shipped presets, composed from parts: a dataset recipe (`configs/datasets/*.yaml`), a
method block (`configs/methods/*.yaml`) and the deltas of a row of `configs/presets.yaml`,
merged key by key. Names are derived from the table (`cifar10_ir100_bbn`); no preset is a file.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbn.config_yaml import load_yaml

PRESETS = Path(__file__).parent / "configs"


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in: mappings merge key by key, any other value replaces."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass(frozen=True)
class Preset:
    """One named preset: the parts it is merged from and its one-line description."""

    name: str
    recipe: str
    method: str
    ratio: float | None
    delta: dict[str, Any]
    about: str

    def tree(self) -> dict[str, Any]:
        """The preset's config tree (name first, then recipe, ratio, method block, deltas)."""
        tree = deep_merge({"name": self.name}, _part("datasets", self.recipe))
        if self.ratio is not None:
            tree = deep_merge(tree, {"data": {"imbalance_ratio": self.ratio}})
        return deep_merge(deep_merge(tree, _part("methods", self.method)), self.delta)


@functools.cache
def _read(path: Path) -> Any:
    return load_yaml(path.read_text(encoding="utf-8"))


def _part(kind: str, name: str) -> dict[str, Any]:
    return copy.deepcopy(_read(PRESETS / kind / f"{name}.yaml")) or {}


@functools.cache
def presets() -> dict[str, Preset]:
    """Every shipped preset by name, expanded from the rows of `configs/presets.yaml`."""
    table = _read(PRESETS / "presets.yaml")
    found: dict[str, Preset] = {}
    for row in table["presets"]:
        recipe, title = row["recipe"], table["recipes"][row["recipe"]]
        for method in row["methods"]:
            for ratio in row.get("ratios") or [None]:
                ir = "" if ratio is None else f"_ir{ratio}"
                name = f"{recipe}{ir}_{method}{row.get('suffix', '')}"
                where = title if ratio is None else f"{title} IR {ratio}"
                about = f"{where}, {table['methods'][method]} ({row['about']}"
                if name in found:
                    raise ValueError(f"preset '{name}' is composed twice in {PRESETS / 'presets.yaml'}")
                found[name] = Preset(name, recipe, method, ratio, row.get("set") or {}, about)
    return found


def preset_names() -> list[str]:
    """The names of the shipped presets, sorted."""
    return sorted(presets())


def preset_tree(name: str) -> dict[str, Any]:
    """The config tree of shipped preset `name` (a fresh copy)."""
    return presets()[name].tree()


def describe(name: str) -> str:
    """One line on preset `name`: dataset, imbalance ratio, method, recipe and epochs."""
    preset = presets()[name]
    epochs = preset.tree().get("train", {}).get("epochs")
    return f"{preset.about}, {epochs} epochs)"
