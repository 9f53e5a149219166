"""Name -> factory registries; unknown names fail with the known ones and the closest match."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from bbn.errors import BBNError

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

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            hint = closest(name, list(self._items))
            did_you_mean = f"; did you mean '{hint}'?" if hint else ""
            raise BBNError(
                f"unknown {self.kind} '{name}'; known: {', '.join(self._items)}{did_you_mean}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
