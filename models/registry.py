"""A tiny name -> entry registry (builders, architectures, tasks): one way of registering everywhere."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from models.errors import UnknownModelError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries; an unknown name raises UnknownModelError listing the known ones.

    >>> DETECTORS = Registry("detection architecture")
    >>> @DETECTORS.register("tiny")
    ... def build_tiny(*, num_classes): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``add``."""

        def decorator(entry: T) -> T:
            return self.add(name, entry)

        return decorator

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} `{name}` is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownModelError(
                f"Unknown {self.kind} `{name}`. Available options are: {sorted(self._entries)}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
