"""A tiny name -> builder registry shared by every task."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from models.errors import UnknownModelError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """Maps names to builders; an unknown name raises UnknownModelError listing the known ones.

    >>> DETECTORS = Registry("detection architecture")
    >>> @DETECTORS.register("tiny")
    ... def build_tiny(*, num_classes): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(fn: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} `{name}` is registered twice")
            self._entries[name] = fn
            return fn

        return decorator

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
