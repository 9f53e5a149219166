"""The YAML reader of config files and `key=value` overrides: plain data only, and bounded
by construction. Before any Python object is built, the composed document is measured with
every alias expanded, so an alias bomb (a few hundred bytes standing for 10^9 values) or a
huge list is refused in time proportional to the text; a key repeated in one mapping is an
error (YAML would silently keep the last)."""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from bbn.errors import quote

MAX_CONFIG_BYTES = 100_000  # a config file or an override value; the shipped presets hold about 1 KB
MAX_VALUES = 10_000  # YAML nodes (keys, values, list items) with every alias expanded
MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLRefused(ValueError):
    """YAML that parses but is refused: `what` is wrong, `fix` says what to do."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(f"{what}; {fix}")
        self.what, self.fix = what, fix


def expanded_size(root: Node, limit: int = MAX_VALUES) -> int:
    """The number of nodes under `root` with every alias expanded, counted on the composed
    graph (each distinct node once, so the work is bounded by the text); stops counting a
    node's children once past `limit`. A node that contains itself through an alias is refused."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YAMLRefused(f"an alias at line {node.start_mark.line + 1} refers to a value that contains it",
                              "write the value out")
        active.add(key)
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                break
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


class ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses an oversized document before constructing it and a key
    repeated within one mapping."""

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None and expanded_size(node) > MAX_VALUES:
            raise YAMLRefused(f"holds more than {MAX_VALUES:,} values once its aliases (*name) are expanded",
                              "a config holds a few dozen values; shorten it")
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: the base class refuses it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise YAMLRefused(f"repeats the key '{quote(key)}' at line {key_node.start_mark.line + 1} "
                                      f"(first at line {first})", "keep one of them")
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """The plain data of one YAML document (None when empty), read with ConfigLoader.
    Raises YAMLRefused, or yaml.YAMLError / ValueError / RecursionError on bad YAML."""
    loader = ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
