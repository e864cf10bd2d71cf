"""Running a batch so that one bad item fails alone: the serving batcher and the batch engines
both call ``run_isolated``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

In = TypeVar("In")


@dataclass(frozen=True)
class Failure:
    """What one item of a batch raised, in place of its output."""

    error: Exception


def run_isolated(run: Callable[[list[In]], Sequence[Any]], items: Sequence[In]) -> list[Any]:
    """``run(items)``: one output per item, in order. When the batch raises (or returns the wrong
    number of outputs), each item runs again alone, so only the items that fail by themselves
    get a ``Failure``; the others get their outputs."""
    batch = list(items)
    try:
        outputs = list(run(batch))
        if len(outputs) != len(batch):
            raise RuntimeError(f"the model returned {len(outputs)} outputs for {len(batch)} inputs")
        return outputs
    except Exception as exc:  # noqa: BLE001 — handed back per item
        if len(batch) == 1:
            return [Failure(exc)]
    return [run_isolated(run, [item])[0] for item in batch]
