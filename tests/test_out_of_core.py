"""Out-of-core training: an epoch over memory-mapped shards keeps about one shard resident, not the data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from widedeep.features.encoded import Encoded
from widedeep.features.shards import open_split, write_shard
from widedeep.train.data import ShardLoader


def _rss_file_kb() -> int:
    """Resident file-backed pages mapped by this process (what memory-mapped shards add to RSS), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")
    return 0


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """6 shards of 40,000 rows x 100 int32 ids (+ a list slot): ~16 MB each, ~100 MB in all."""
    root = tmp_path_factory.mktemp("ooc")
    rng = np.random.default_rng(0)
    for k in range(6):
        n = 40_000
        offsets = np.arange(0, 2 * n + 1, 2, dtype=np.int64)
        enc = Encoded(
            ids=rng.integers(0, 1000, (n, 100), dtype=np.int32),
            dense=rng.random((n, 4), dtype=np.float32),
            lists={"l": (rng.integers(1, 50, 2 * n, dtype=np.int32), offsets)},
            label=(rng.random(n) < 0.3).astype(np.uint8),
        )
        write_shard(root / "train" / f"part-{k:05d}", enc)
    shard_kb = sum(f.stat().st_size for f in (root / "train" / "part-00000").iterdir()) // 1024
    return root, shard_kb


@pytest.mark.parametrize("shuffle", [True, False])
def test_an_epoch_keeps_about_one_shard_resident(shards: tuple[Path, int], shuffle: bool) -> None:
    root, shard_kb = shards
    parts = open_split(root, "train")
    loader = ShardLoader(parts, 4096, seed=0, shuffle=shuffle, prefetch=2)
    before = _rss_file_kb()
    rows = sum(len(b) for b in loader.epoch(0))
    grown = _rss_file_kb() - before
    assert rows == 240_000
    # Without releasing pages, an epoch leaves all 6 shards (~6 * shard_kb) resident in this process.
    assert grown < 2.5 * shard_kb, f"RssFile grew by {grown} KiB over an epoch; one shard is {shard_kb} KiB"
