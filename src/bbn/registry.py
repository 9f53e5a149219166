"""Name -> factory registries; unknown names fail with the known ones and the closest match."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from bbn.errors import BBNError, quote

T = TypeVar("T")


def closest(name: str, choices: list[str]) -> str | None:
    """The choice closest to `name`, or None when nothing is close."""
    found = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return found[0] if found else None


class Registry(Generic[T]):
    """A dict of name -> factory with a helpful error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._reads: dict[str, frozenset[str]] = {}
        # Families: "PREFIX/ARG" names whose entry a maker builds from ARG (timm/convnext_atto).
        self._families: dict[str, Callable[[str], T]] = {}

    def register(self, name: str, reads: Iterable[str] = ()) -> Callable[[T], T]:
        """Add `name`; `reads`: the dotted config keys this entry reads beyond the ones every
        entry of the kind reads (the config refuses a user's key that the chosen entry does not read)."""
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            self._reads[name] = frozenset(reads)
            return obj

        return add

    def register_family(self, prefix: str, reads: Iterable[str] = ()) -> Callable[[Callable[[str], T]], Callable[[str], T]]:
        """Add every name `prefix/ARG`: the decorated `make(ARG)` returns the entry (and raises
        BBNError for an ARG it does not know); `reads` as for `register`."""
        def add(make: Callable[[str], T]) -> Callable[[str], T]:
            if prefix in self._families:
                raise ValueError(f"{self.kind} family '{prefix}/' registered twice")
            self._families[prefix] = make
            self._reads[f"{prefix}/"] = frozenset(reads)
            return make

        return add

    def _family(self, name: str) -> tuple[str, str] | None:
        prefix, slash, arg = name.partition("/")
        return (prefix, arg) if slash and prefix in self._families else None

    def get(self, name: str) -> T:
        family = self._family(name)
        if family is not None:
            prefix, arg = family
            if not arg:
                raise BBNError(f"{self.kind} '{quote(name)}' names no member of family '{prefix}/'; "
                               f"give one, e.g. {prefix}/NAME")
            return self._families[prefix](arg)
        if name not in self._items:
            hint = closest(quote(name, 100), list(self._items))
            did_you_mean = f"; did you mean '{hint}'?" if hint else ""
            raise BBNError(
                f"unknown {self.kind} '{quote(name)}'; known: {', '.join(self.names())}{did_you_mean}"
            )
        return self._items[name]

    def reads(self, name: str) -> frozenset[str]:
        """The config keys entry `name` declared it reads."""
        family = self._family(name)
        return self._reads.get(f"{family[0]}/" if family else name, frozenset())

    def names(self) -> list[str]:
        """The registered names, then one `PREFIX/...` per family."""
        return list(self._items) + [f"{prefix}/..." for prefix in self._families]

    def __contains__(self, name: object) -> bool:
        return name in self._items or (isinstance(name, str) and self._family(name) is not None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
