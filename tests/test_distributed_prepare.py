"""Distributed preparation: per-part statistics, packed to bytes and merged, give the single-process FeatureSet."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from widedeep.config import FeatureSpec, load
from widedeep.features import distributed as fdist
from widedeep.features.group import Group
from widedeep.features.packed import merge_packed, pack_stats, unpack_stats
from widedeep.features.transform import FeatureSet


def _fit_parts(cfg_path: Path, parts: int, exact_limit: int | None = None) -> tuple[dict, dict]:
    """(single-process features dict, merged-from-`parts` features dict) on the tiny training log."""
    cfg = load(cfg_path)
    table = pq.read_table(cfg_path.parent / "train.parquet")

    def fresh() -> FeatureSet:
        fs = FeatureSet.from_config(cfg).reset()
        if exact_limit is not None:
            for q in fs.quantiles_.values():
                q.exact_limit = exact_limit
        return fs

    whole = fresh()
    for b in table.to_batches(max_chunksize=300):
        whole.partial_fit(b)
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    blobs = []
    for a, b in zip(bounds, bounds[1:]):
        part = fresh().partial_fit(table.slice(a, b - a))
        blobs.append(pack_stats(part))
    merged = merge_packed(blobs, like=whole)
    return whole.to_dict(), merged.to_dict()


def test_merged_parts_equal_the_single_process_feature_set(tiny_config: Path) -> None:
    whole, merged = _fit_parts(tiny_config, parts=3)
    assert merged == whole  # vocabularies, boundaries (exact regime), counts, row count: all identical
    vocab = {f["name"]: f for f in whole["features"]}["country"]["vocabulary"]
    assert vocab  # the comparison above covered a real vocabulary


def test_sketched_quantiles_merge_within_the_sketch_error(tiny_config: Path) -> None:
    whole, merged = _fit_parts(tiny_config, parts=2, exact_limit=100)  # force KLL sketches on every part
    w = {f["name"]: f for f in whole["features"]}
    m = {f["name"]: f for f in merged["features"]}
    for name in ("age", "price"):
        a, b = np.asarray(w[name]["quantiles_state"]["boundaries"]), np.asarray(m[name]["quantiles_state"]["boundaries"])
        assert w[name]["quantiles_state"]["count"] == m[name]["quantiles_state"]["count"]
        # 2,000 values are below the KLL k=2000 capacity, so the merged sketch is still exact: identical boundaries.
        np.testing.assert_array_equal(a, b)
    for name in ("country", "installed_apps", "impression_app"):
        assert w[name]["vocabulary"] == m[name]["vocabulary"]


def test_files_are_dealt_round_robin_and_blobs_are_checked() -> None:
    files = [f"f{i}" for i in range(5)]
    assert [Group(r, 2).share(files) for r in range(2)] == [["f0", "f2", "f4"], ["f1", "f3"]]
    assert Group(1, 2).share(files[:1]) == []
    with pytest.raises(ValueError, match="rank 2 is not in a group of 2"):
        Group(2, 2)
    fs = FeatureSet([], [], None)
    with pytest.raises(ValueError, match="not a widedeep statistics blob"):
        unpack_stats(b"garbage!" + bytes(16), fs)


def test_single_process_gather_is_identity() -> None:
    assert fdist.all_gather_bytes(b"abc") == [b"abc"]
    assert fdist.world() == (0, 1)
    g = fdist.TorchGroup.current()
    assert (g.rank, g.size) == (0, 1) and g.gather({"a": 1}) == [{"a": 1}]


def test_large_sketched_parts_merge_to_boundaries_at_the_right_ranks() -> None:
    spec = FeatureSpec("x", "continuous", quantiles=20)
    rng = np.random.default_rng(0)
    values = rng.lognormal(0, 1, 200_000)
    blobs = []
    for part in np.split(values, 4):
        fs = FeatureSet([spec]).reset()
        fs.quantiles_["x"].exact_limit = 1_000  # each part switches to a KLL sketch
        fs.partial_fit(pa.table({"x": part}))
        assert fs.quantiles_["x"]._sketch is not None
        blobs.append(pack_stats(fs))
    merged = FeatureSet([spec]).reset()
    for blob in blobs:
        merged.merge(unpack_stats(blob, merged))
    bounds = np.asarray(merged.to_dict()["features"][0]["quantiles_state"]["boundaries"])
    assert len(bounds) == 19
    ranks = np.searchsorted(np.sort(values), bounds, side="right") / len(values)
    # Documented tolerance: the KLL (k=2000) normalized rank error, ~0.14% at 99% confidence; allow 0.5%.
    np.testing.assert_allclose(ranks, np.arange(1, 20) / 20, atol=0.005)


# ----------------------------------------------------------------------------------------------------------------------
# A real 2-process `torchrun -m widedeep prepare`


def _concat_split(prepared: Path, split: str) -> dict[str, np.ndarray]:
    from widedeep.batch import Batch
    from widedeep.features.shards import open_split

    batches = [Batch.from_encoded(e, np.arange(len(e))) for e in open_split(prepared, split)]
    out = {"ids": np.concatenate([b.ids.numpy() for b in batches]), "dense": np.concatenate([b.dense.numpy() for b in batches])}
    out["label"] = np.concatenate([b.label.numpy() for b in batches])
    for name in batches[0].lists:
        out[name] = np.concatenate([b.lists[name].numpy()[:, :1] for b in batches])  # first element of each row's list
        out[name + "_n"] = np.concatenate([(b.lists[name].numpy() > 0).sum(1) for b in batches])
    return out


def _three_file_project(tiny_config: Path, tmp_path: Path, names: tuple[str, ...] = ("one", "two")) -> dict[str, Path]:
    """The tiny log's training rows in 3 files, and a config per name that prepares them into folder <name>."""
    table = pq.read_table(tiny_config.parent / "train.parquet")
    (tmp_path / "train").mkdir()
    for i, (a, b) in enumerate([(0, 700), (700, 1400), (1400, 2000)]):
        pq.write_table(table.slice(a, b - a), tmp_path / "train" / f"part-{i}.parquet")
    pq.write_table(pq.read_table(tiny_config.parent / "eval.parquet"), tmp_path / "eval.parquet")
    text = tiny_config.read_text().replace('train = "train.parquet"', 'train = "train"')
    for name in names:
        (tmp_path / f"{name}.toml").write_text(text.replace("[data]", f'[data]\nprepared = "{name}"'))
    return {name: tmp_path / f"{name}.toml" for name in names}


def _assert_same_prepared(one: Path, two: Path, ranks: int) -> None:
    import json

    assert json.loads((two / "features.json").read_text()) == json.loads((one / "features.json").read_text())
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["splits"]["train"]["rows"] == 2000 and manifest["ranks"] == ranks
    assert len(manifest["splits"]["train"]["shards"]) == 3  # one shard per file here, written by every rank
    assert manifest == {**json.loads((one / "manifest.json").read_text()), "ranks": ranks}
    for split in ("train", "eval"):
        a, b = _concat_split(one, split), _concat_split(two, split)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{split} {k}")


def test_torchrun_prepare_equals_single_process(tiny_config: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from widedeep.features.prepare import prepare
    from test_distributed_sync import free_port

    configs = _three_file_project(tiny_config, tmp_path)
    prepare(load(configs["one"]), verbose=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "widedeep", "prepare", str(configs["two"])]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_prepared(tmp_path / "one", tmp_path / "two", ranks=2)


# ----------------------------------------------------------------------------------------------------------------------
# The same body on ranks that are threads of this process (a Group whose all-gather is a shared list and a barrier)


@dataclass(frozen=True)
class ThreadGroup(Group):
    slots: list = field(default_factory=list, compare=False)
    barrier: threading.Barrier | None = field(default=None, compare=False)

    def all_gather(self, blob: bytes) -> list[bytes]:
        self.slots[self.rank] = blob
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before every rank has read them all
        return out


def _on_ranks(size: int, fn) -> list:
    """fn(group) on `size` threads, one per rank; each rank's result or exception."""
    slots, barrier = [b""] * size, threading.Barrier(size, timeout=60)
    results: list = [None] * size

    def rank(r: int) -> None:
        try:
            results[r] = fn(ThreadGroup(r, size, slots, barrier))
        except Exception as e:  # noqa: BLE001 -- returned to the test
            results[r] = e

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a rank is stuck in a collective"
    return results


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_ranks_in_one_body_equal_one_process(tiny_config: Path, tmp_path: Path, ranks: int) -> None:
    from widedeep.features.prepare import prepare

    configs = _three_file_project(tiny_config, tmp_path)
    prepare(load(configs["one"]), verbose=False)
    results = _on_ranks(ranks, lambda g: prepare(load(configs["two"]), verbose=False, group=g))  # rank 3 has no file
    assert results == [tmp_path / "two"] * ranks
    _assert_same_prepared(tmp_path / "one", tmp_path / "two", ranks=ranks)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folder left
    assert _on_ranks(ranks, lambda g: prepare(load(configs["two"]), verbose=False, group=g)) == results  # fresh


def test_an_error_on_one_rank_raises_on_every_rank(tiny_config: Path, tmp_path: Path) -> None:
    from widedeep.features.columns import FeatureError
    from widedeep.features.prepare import prepare

    configs = _three_file_project(tiny_config, tmp_path)
    bad = pq.read_table(tmp_path / "train" / "part-1.parquet").drop_columns(["age"])
    pq.write_table(bad, tmp_path / "train" / "part-1.parquet")  # dealt to rank 1
    results = _on_ranks(2, lambda g: prepare(load(configs["two"]), verbose=False, group=g))
    assert isinstance(results[1], FeatureError) and "part-1.parquet: missing column 'age'" in str(results[1])
    assert isinstance(results[0], ValueError) and "rank 1: FeatureError" in str(results[0])
    assert not (tmp_path / "two").exists()


def test_label_classes_and_constant_columns_are_judged_on_all_ranks_together(tiny_config: Path, tmp_path: Path) -> None:
    import warnings

    from widedeep.features.checks import DataWarning
    from widedeep.features.prepare import prepare

    configs = _three_file_project(tiny_config, tmp_path)
    for i in range(3):  # each rank sees one label and one country, the data as a whole has two of each
        path = tmp_path / "train" / f"part-{i}.parquet"
        t = pq.read_table(path)
        t = t.set_column(t.column_names.index("installed"), "installed", pa.array(np.full(t.num_rows, i % 2)))
        t = t.set_column(t.column_names.index("country"), "country", pa.array(["us" if i % 2 else "de"] * t.num_rows))
        pq.write_table(t, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        results = _on_ranks(2, lambda g: prepare(load(configs["two"]), verbose=False, group=g))
    assert results == [tmp_path / "two"] * 2

    for i in range(3):  # every rank: a single label value
        path = tmp_path / "train" / f"part-{i}.parquet"
        t = pq.read_table(path)
        pq.write_table(t.set_column(t.column_names.index("installed"), "installed", pa.array(np.zeros(t.num_rows, np.int64))), path)
    results = _on_ranks(2, lambda g: prepare(load(configs["two"]), verbose=False, group=g))
    assert all(isinstance(r, ValueError) and "has only the value 0 in the training data (2000 rows" in str(r) for r in results)
