"""Distributed preparation: per-part statistics, packed to bytes and merged, give the single-process FeatureSet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from widedeep.config import FeatureSpec, load
from widedeep.features import distributed as fdist
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
        blobs.append(fdist.pack_stats(part))
    merged = FeatureSet.from_config(cfg).reset()
    for blob in blobs:
        merged.merge(fdist.unpack_stats(blob, merged))
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
    assert [fdist.files_of_rank(files, r, 2) for r in range(2)] == [["f0", "f2", "f4"], ["f1", "f3"]]
    assert fdist.files_of_rank(files[:1], 1, 2) == []
    fs = FeatureSet([], [], None)
    with pytest.raises(ValueError, match="not a widedeep statistics blob"):
        fdist.unpack_stats(b"garbage!" + bytes(16), fs)


def test_single_process_gather_is_identity() -> None:
    assert fdist.all_gather_bytes(b"abc") == [b"abc"]
    assert fdist.world() == (0, 1)


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
        blobs.append(fdist.pack_stats(fs))
    merged = FeatureSet([spec]).reset()
    for blob in blobs:
        merged.merge(fdist.unpack_stats(blob, merged))
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


def test_torchrun_prepare_equals_single_process(tiny_config: Path, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from widedeep.features.prepare import prepare
    from test_distributed_sync import free_port

    table = pq.read_table(tiny_config.parent / "train.parquet")
    (tmp_path / "train").mkdir()
    for i, (a, b) in enumerate([(0, 700), (700, 1400), (1400, 2000)]):
        pq.write_table(table.slice(a, b - a), tmp_path / "train" / f"part-{i}.parquet")
    pq.write_table(pq.read_table(tiny_config.parent / "eval.parquet"), tmp_path / "eval.parquet")
    text = tiny_config.read_text().replace('train = "train.parquet"', 'train = "train"')
    for name in ("one", "two"):
        (tmp_path / f"{name}.toml").write_text(text.replace("[data]", f'[data]\nprepared = "{name}"'))

    prepare(load(tmp_path / "one.toml"), verbose=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "widedeep", "prepare", str(tmp_path / "two.toml")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]

    one, two = tmp_path / "one", tmp_path / "two"
    assert json.loads((two / "features.json").read_text()) == json.loads((one / "features.json").read_text())
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["splits"]["train"]["rows"] == 2000 and manifest["ranks"] == 2
    assert len(manifest["splits"]["train"]["shards"]) == 3  # one shard per file here, written by both ranks
    for split in ("train", "eval"):
        a, b = _concat_split(one, split), _concat_split(two, split)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{split} {k}")
