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

    def get(self, name: str) -> T:
        if name not in self._items:
            hint = closest(quote(name, 100), list(self._items))
            did_you_mean = f"; did you mean '{hint}'?" if hint else ""
            raise BBNError(
                f"unknown {self.kind} '{quote(name)}'; known: {', '.join(self._items)}{did_you_mean}"
            )
        return self._items[name]

    def reads(self, name: str) -> frozenset[str]:
        """The config keys entry `name` declared it reads."""
        return self._reads.get(name, frozenset())

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
