"""ShardLoader: every row once per epoch, deterministic per (seed, epoch), resumable by batch index, disjoint per rank."""

from __future__ import annotations

import numpy as np
import pytest

from widedeep.features.encoded import Encoded
from widedeep.train import data
from widedeep.train.data import ShardLoader


def shard(first: int, n: int) -> Encoded:
    """Rows whose id column 0 is a global row number, with a ragged list slot holding that number once or twice."""
    rows = np.arange(first, first + n)
    lengths = rows % 3  # 0, 1 or 2 values
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.repeat(rows, lengths).astype(np.int32)
    return Encoded(
        ids=np.stack([rows, rows % 7], axis=1).astype(np.int32),
        dense=(rows[:, None] * np.array([[1.0, 0.5]])).astype(np.float32),
        lists={"l": (values, offsets)},
        label=(rows % 2).astype(np.uint8),
    )


SHARDS = [shard(0, 100), shard(100, 37), shard(137, 64)]


def rows_of(loader: ShardLoader, epoch: int, start: int = 0) -> list[np.ndarray]:
    return [b.ids[:, 0].numpy() for b in loader.epoch(epoch, start)]


def test_each_row_once_per_epoch_and_batches_consistent() -> None:
    loader = ShardLoader(SHARDS, 16, seed=3)
    assert len(loader) == 7 + 3 + 4 and loader.rows == 201
    seen = []
    for b in loader.epoch(0):
        r = b.ids[:, 0].numpy()
        assert len(b) <= 16 and np.all(np.diff(r) > 0)  # sorted within the batch
        np.testing.assert_array_equal(b.label.numpy(), r % 2)
        np.testing.assert_array_equal(b.dense[:, 1].numpy(), r * 0.5)
        lists = b.lists["l"].numpy()
        np.testing.assert_array_equal((lists != 0).sum(1), r % 3)  # (row 0 pads to [0, 0]; its length is 0)
        seen.append(r)
    assert sorted(np.concatenate(seen).tolist()) == list(range(201))


def test_deterministic_per_seed_and_epoch() -> None:
    a, b = ShardLoader(SHARDS, 16, seed=3), ShardLoader(SHARDS, 16, seed=3, prefetch=0)
    for x, y in zip(rows_of(a, 1), rows_of(b, 1)):
        np.testing.assert_array_equal(x, y)
    flat = lambda bs: np.concatenate(bs)  # noqa: E731
    assert not np.array_equal(flat(rows_of(a, 0)), flat(rows_of(a, 1)))
    assert not np.array_equal(flat(rows_of(a, 0)), flat(rows_of(ShardLoader(SHARDS, 16, seed=4), 0)))
    # Shuffling crosses batch boundaries: the first batch is not just the first rows of a shard.
    assert set(rows_of(a, 0)[0].tolist()) != set(range(rows_of(a, 0)[0].min(), rows_of(a, 0)[0].min() + 16))


@pytest.mark.parametrize("start", [0, 1, 6, 7, 13, 14])
def test_resume_from_batch_index_equals_the_tail(start: int) -> None:
    loader = ShardLoader(SHARDS, 16, seed=5)
    full = rows_of(loader, 2)
    tail = rows_of(loader, 2, start)
    assert len(tail) == len(full) - start
    for x, y in zip(full[start:], tail):
        np.testing.assert_array_equal(x, y)


def test_ranks_take_disjoint_equal_parts() -> None:
    full = ShardLoader(SHARDS, 16, seed=1)
    parts = [ShardLoader(SHARDS, 16, seed=1, rank=r, world=3) for r in range(3)]
    assert [len(p) for p in parts] == [len(full) // 3] * 3
    got = [np.concatenate(rows_of(p, 0)) for p in parts]
    union = np.concatenate(got)
    assert len(np.unique(union)) == len(union)
    plan = full.plan(0)
    assert [s for r in range(3) for s in parts[r].plan(0)] == [s for r in range(3) for s in plan[r::3][: len(full) // 3]]


def test_no_shuffle_is_file_order() -> None:
    loader = ShardLoader(SHARDS, 50, shuffle=False)
    assert np.concatenate(rows_of(loader, 0)).tolist() == list(range(201))


def test_memory_mapped_shards(tmp_path) -> None:
    enc = shard(0, 40)
    for name in ("ids", "dense", "label"):
        np.save(tmp_path / f"{name}.npy", getattr(enc, name))
    mm = Encoded(
        ids=np.load(tmp_path / "ids.npy", mmap_mode="r", allow_pickle=False),
        dense=np.load(tmp_path / "dense.npy", mmap_mode="r", allow_pickle=False),
        lists=enc.lists,
        label=np.load(tmp_path / "label.npy", mmap_mode="r", allow_pickle=False),
    )
    a = rows_of(ShardLoader([mm], 8, seed=2), 0)
    b = rows_of(ShardLoader([enc], 8, seed=2), 0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_each_shard_is_released_when_the_epoch_leaves_it(monkeypatch: pytest.MonkeyPatch) -> None:
    released = []
    monkeypatch.setattr(data, "release_pages", lambda enc: released.append(next(i for i, s in enumerate(SHARDS) if s is enc)))
    loader = ShardLoader(SHARDS, 16, seed=3, prefetch=0)
    order = list(dict.fromkeys(s.shard for s in loader.plan(0)))
    list(loader.epoch(0))
    assert released == order  # after its last batch, the last shard included: resident pages stay about one shard


def test_errors_are_clear_and_propagate_from_the_prefetch_thread() -> None:
    with pytest.raises(ValueError, match="no training rows"):
        ShardLoader([shard(0, 0)], 4)
    with pytest.raises(ValueError, match="rank"):
        ShardLoader(SHARDS, 4, rank=2, world=2)
    with pytest.raises(ValueError, match="outside epoch"):
        next(ShardLoader(SHARDS, 16).epoch(0, start=99))
    bad = shard(0, 20)
    bad.lists["l"] = (bad.lists["l"][0][:3], bad.lists["l"][1])  # offsets point past the values
    with pytest.raises(IndexError):
        list(ShardLoader([bad], 4, prefetch=2).epoch(0))


def test_abandoned_epoch_stops_the_prefetch_thread() -> None:
    import threading

    it = ShardLoader(SHARDS, 4, prefetch=2).epoch(0)
    next(it)
    it.close()
    assert not any(t.name == "widedeep-prefetch" for t in threading.enumerate())
