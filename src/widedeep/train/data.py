"""Shuffled mini-batches over memory-mapped encoded shards, deterministic per (seed, epoch) and resumable by batch index.

Each epoch visits the shards in a seeded order and each shard's rows in a seeded full permutation; consecutive slices of
that permutation are the batches (the last batch of a shard may be short). Memory stays bounded by one shard's
permutation (8 bytes per row), never the dataset. Row indices are sorted within a batch: the same examples, but a
forward-moving gather from the memory map, which is several times faster than a random one.

For data-parallel training each of `world` ranks takes every `world`-th batch of the epoch's plan (a disjoint part),
truncated so that all ranks run the same number of steps.
"""

from __future__ import annotations

import mmap
import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from widedeep.batch import Batch
from widedeep.features.encoded import Encoded


@dataclass(frozen=True)
class Slice:
    """One planned batch: rows [start, stop) of shard `shard`'s permutation."""

    shard: int
    start: int
    stop: int


class ShardLoader:
    """Iterate one epoch of shuffled `Batch`es: ``for batch in loader.epoch(e, start=k)`` skips the first k batches."""

    def __init__(
        self,
        shards: Sequence[Encoded],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
        prefetch: int = 2,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world), got rank={rank} world={world}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.shards = [s for s in shards if len(s) > 0]
        if not self.shards:
            raise ValueError(f"no training rows: {len(shards)} shard(s), all empty")
        for i, s in enumerate(self.shards):
            if s.label is None:
                raise ValueError(f"shard {i} has no labels; training needs label.npy")
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world, self.prefetch = rank, world, prefetch
        per_shard = [-(-len(s) // batch_size) for s in self.shards]
        self._batches_total = sum(per_shard)
        if self._batches_total < world:
            raise ValueError(f"{self._batches_total} batches cannot be split over {world} ranks")

    @property
    def rows(self) -> int:
        return sum(len(s) for s in self.shards)

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        return self._batches_total // self.world

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, 0x5EED])

    def plan(self, epoch: int) -> list[Slice]:
        """The batches this rank trains in `epoch`, in order (a pure function of seed, epoch, rank, world)."""
        order = self._rng(epoch).permutation(len(self.shards)) if self.shuffle else np.arange(len(self.shards))
        out = []
        for k in order:
            n = len(self.shards[k])
            out.extend(Slice(int(k), a, min(a + self.batch_size, n)) for a in range(0, n, self.batch_size))
        return out[self.rank :: self.world][: len(self)]

    def _perm(self, epoch: int, shard: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, 0x5EED, shard + 1])
        return rng.permutation(len(self.shards[shard]))

    def _slices(self, epoch: int, start: int) -> Iterator[tuple[int, np.ndarray]]:
        cached: tuple[int, np.ndarray] | None = None
        last: int | None = None
        for s in self.plan(epoch)[start:]:
            if last is not None and last != s.shard:
                release_pages(self.shards[last])  # done with it this epoch: resident memory stays about one shard
            last = s.shard
            if not self.shuffle:
                yield s.shard, np.arange(s.start, s.stop)
                continue
            if cached is None or cached[0] != s.shard:
                cached = (s.shard, self._perm(epoch, s.shard))
            yield s.shard, np.sort(cached[1][s.start : s.stop])
        if last is not None:
            release_pages(self.shards[last])  # the epoch (or the evaluation pass) is over

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches of `epoch` from batch index `start` on; a background thread gathers the next `prefetch` batches."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start batch {start} is outside epoch of {len(self)} batches")
        gen = (Batch.from_encoded(self.shards[k], rows) for k, rows in self._slices(epoch, start))
        if self.prefetch == 0:
            yield from gen
            return
        yield from _prefetched(gen, self.prefetch)


def release_pages(enc: Encoded) -> None:
    """Drop a memory-mapped shard's pages from this process (they stay in the page cache; the next read faults them
    back in). Without this, every page touched in an epoch stays resident and RSS grows with the data set."""
    arrays = [enc.ids, enc.dense, enc.label, *(a for pair in enc.lists.values() for a in pair)]
    for m in {id(a._mmap): a._mmap for a in arrays if getattr(a, "_mmap", None) is not None}.values():
        if hasattr(m, "madvise") and hasattr(mmap, "MADV_DONTNEED") and not m.closed:
            m.madvise(mmap.MADV_DONTNEED)


_DONE = object()


def _prefetched(gen: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run `gen` in a daemon thread, `depth` items ahead; order is unchanged, errors are re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as e:  # handed to the consumer, which raises it
            q.put(e)

    t = threading.Thread(target=work, name="widedeep-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            t.join(timeout=0.05)
