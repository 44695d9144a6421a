"""One tiny registry class shared by every extension point (datasets, losses, encoders...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from lvmlt.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to a builder; unknown names fail with the list of known ones.

    Example:
        >>> LOSSES = Registry("loss")
        >>> @LOSSES.register("ce")
        ... def build_ce(...): ...
        >>> LOSSES.get("ce")
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise UserError(f"unknown {self.kind} {name!r}", fix=f"choose one of: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
