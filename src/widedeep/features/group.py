"""The processes that prepare data together, and the collectives `prepare` needs: an all-gather of bytes, and agreement
on failure (so that an error on one rank raises on every rank instead of leaving the others waiting).

`Group()` is one process alone; `features.distributed.TorchGroup` is the ranks of a torchrun job. Keeping torch out of
this module lets a one-process `prepare` run without importing it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    """Rank `rank` of `size` processes; the base class gathers for one process only (subclasses connect several)."""

    rank: int = 0
    size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ValueError(f"rank {self.rank} is not in a group of {self.size}")

    def all_gather(self, blob: bytes) -> list[bytes]:
        """Every rank's `blob`, in rank order, on every rank."""
        if self.size != 1:
            raise NotImplementedError(f"{type(self).__name__} cannot gather across {self.size} processes")
        return [blob]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's JSON-able `value`, in rank order, on every rank."""
        return [json.loads(b) for b in self.all_gather(json.dumps(value).encode())]

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's share of `items`: every `size`-th one from index `rank` (none when items < ranks)."""
        return list(items[self.rank :: self.size])

    def run(self, fn: Callable[[], T]) -> T:
        """`fn()` on every rank; if it raised on any, raise on every one: the failing rank its own error, the others a
        ValueError naming it. One process just calls `fn`."""
        if self.size == 1:
            return fn()
        try:
            result, error = fn(), None
        except Exception as e:  # re-raised below, once every rank knows
            result, error = None, e
        note = "" if error is None else f"rank {self.rank}: {type(error).__name__}: {error}"
        failed = [n for n in self.gather(note) if n]
        if error is not None:
            raise error
        if failed:
            raise ValueError("failed on another rank: " + "; ".join(failed))
        return result  # type: ignore[return-value]
