"""Who reads which config key. Every key a user gives (in their YAML file or as a `key=value`
override) must be read by the run: the train section, `name`, `seed` and the generic data,
augment, model and method keys always are; any other key is read only by the data sources,
models or methods that declare it when they register (`reads=`). A given key the chosen
source, model or method does not read is refused, naming who reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from bbn.errors import BBNError

if TYPE_CHECKING:
    from bbn.config import Config
    from bbn.registry import Registry

# Read whatever the source, model and method are (besides every train.* key).
ALWAYS_READ = frozenset({
    "name", "seed",
    "data.source", "data.profile", "data.imbalance_ratio", "data.subset_seed", "data.n_max",
    "data.test_max_per_class", "data.image_size", "data.val_per_class",
    "augment.flip", "augment.mean", "augment.std",
    "model.name", "method.name",
})
ALWAYS_READ_SECTIONS = ("train.",)


@dataclass(frozen=True)
class Kind:
    """One kind of reader: its registry, its plural, the key that chooses one and the chosen."""

    plural: str
    choose: str
    registry: Registry[Any]
    chosen: str

    def readers(self, key: str) -> list[str]:
        """The names that read `key`, sorted (registration order follows import order)."""
        return sorted(name for name in self.registry.names() if reads_key(self.registry.reads(name), key))


def reads_key(reads: frozenset[str], key: str) -> bool:
    """Whether `key` is one of `reads` or inside one (model.options.depth is in model.options)."""
    return any(key == r or key.startswith(r + ".") for r in reads)


def kinds(cfg: Config) -> list[Kind]:
    """The data source, model and method `cfg` chooses, each with its registry."""
    from bbn.data.catalog import SOURCES
    from bbn.methods import METHODS
    from bbn.models import MODELS

    return [Kind("sources", "data.source", SOURCES, cfg.data.source),
            Kind("models", "model.name", MODELS, cfg.model.name),
            Kind("methods", "method.name", METHODS, cfg.method.name)]


def always_read(key: str) -> bool:
    return key in ALWAYS_READ or key.startswith(ALWAYS_READ_SECTIONS)


def leaf_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of the values in a (nested) mapping: {'train': {'lr': 1}} -> ['train.lr']."""
    keys: list[str] = []
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            keys.extend(leaf_keys(value, key + "."))
        else:
            keys.append(key)
    return keys


def override_keys(key: str, value: Any) -> list[str]:
    """The leaf keys an override sets (`data={root: x}` sets data.root)."""
    return leaf_keys(value, key + ".") if isinstance(value, Mapping) and value else [key]


def unread_reason(cfg: Config, key: str) -> str | None:
    """Why `key` is not read by the run `cfg` describes (None when it is read)."""
    if always_read(key):
        return None
    found = [(kind, kind.readers(key)) for kind in kinds(cfg)]
    if any(reads_key(kind.registry.reads(kind.chosen), key) for kind, _ in found):
        return None
    kind, names = next(((k, n) for k, n in found if n), (None, []))
    if kind is None:
        return f"{key} is read by no data source, model or method; drop it"
    return (f"{key} is read by {kind.plural} {', '.join(names)}, not by {kind.plural[:-1]} '{kind.chosen}'; "
            f"drop it or choose one of those {kind.plural} ({kind.choose}=NAME)")


def check_read(cfg: Config, keys: Iterable[str]) -> None:
    """Refuse the first of `keys` (given by the user) that the run does not read."""
    for key in keys:
        reason = unread_reason(cfg, key)
        if reason is not None:
            raise BBNError(reason)
