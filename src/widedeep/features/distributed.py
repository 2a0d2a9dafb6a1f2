"""Distributed `prepare` under torchrun: each rank fits its part of the training files, the parts' statistics are merged.

Vocabulary counts merge exactly and quantile statistics merge as exact values (below `Quantiles.exact_limit`) or as KLL
sketches, so the merged FeatureSet is the one a single process fits: identical vocabularies, identical boundaries in
the exact regime, boundaries within the sketch's rank error (~0.14%) beyond it. The statistics travel between ranks as
bytes (Arrow IPC for token counts, raw float64 / KLL serialization for quantiles) in `all_gather`ed uint8 tensors,
never pickled.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from datasketches import kll_doubles_sketch

from widedeep.atomic import ordinary_permissions
from widedeep.config import Config
from widedeep.features.io import iter_batches
from widedeep.features.prepare import SPLITS, _inputs, _read_types, _swap, check_inputs, fingerprint, fit, is_fresh, prepare
from widedeep.features.quantile import Quantiles
from widedeep.features.shards import write_shard
from widedeep.features.transform import FeatureSet
from widedeep.features.vocab import Vocabulary

_MAGIC = b"WDSTATS1"


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def files_of_rank(files: Sequence[str], rank: int, world_size: int) -> list[str]:
    """Rank r's files: every `world`-th one, starting at r (a rank may get none when files < ranks)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    return list(files[rank::world_size])


# ----------------------------------------------------------------------------------------------------------------------
# Partial statistics <-> bytes


def _arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _arrow_table(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.BufferReader(blob)).read_all()


def pack_stats(fs: FeatureSet) -> bytes:
    """The not-yet-finalized statistics of `fs` (token counts, quantile values or sketches, row count) as bytes."""
    header: dict = {"rows": fs.rows_, "vocabs": {}, "quantiles": {}}
    blobs: list[bytes] = []

    def add(b: bytes) -> list[int]:
        blobs.append(b)
        return [sum(map(len, blobs[:-1])), len(b)]

    for name, v in fs.vocabs_.items():
        header["vocabs"][name] = add(_arrow_bytes(pa.table({"v": v.values_.cast(pa.string()), "c": pa.array(v.counts_, pa.int64())})))
    for name, q in fs.quantiles_.items():
        # Quantiles keeps exact values until its limit, then a KLL sketch; both are carried as they are.
        exact = np.concatenate(q._exact) if q._exact else np.zeros(0, np.float64)
        header["quantiles"][name] = {
            "count": q.count_, "nulls": q.nulls_,
            "min": None if q.count_ == 0 else q.min_, "max": None if q.count_ == 0 else q.max_,
            "exact": add(np.ascontiguousarray(exact, dtype="<f8").tobytes()),
            "sketch": None if q._sketch is None else add(q._sketch.serialize()),
        }  # fmt: skip
    head = json.dumps(header).encode()
    return _MAGIC + struct.pack("<Q", len(head)) + head + b"".join(blobs)


def unpack_stats(blob: bytes, like: FeatureSet) -> FeatureSet:
    """A FeatureSet with `like`'s specs holding the statistics `pack_stats` wrote (ready to `merge`)."""
    if blob[: len(_MAGIC)] != _MAGIC:
        raise ValueError(f"not a widedeep statistics blob (starts with {blob[:8]!r})")
    n = struct.unpack("<Q", blob[len(_MAGIC) : len(_MAGIC) + 8])[0]
    start = len(_MAGIC) + 8
    header = json.loads(blob[start : start + n])
    body = memoryview(blob)[start + n :]

    def part(span: list[int]) -> bytes:
        return bytes(body[span[0] : span[0] + span[1]])

    fs = FeatureSet(like.features, like.crosses, like.label)
    if set(header["vocabs"]) != set(fs.vocabs_) or set(header["quantiles"]) != set(fs.quantiles_):
        raise ValueError(f"statistics are for features {sorted(header['vocabs'])} + {sorted(header['quantiles'])}, "
                         f"this config has {sorted(fs.vocabs_)} + {sorted(fs.quantiles_)}")  # fmt: skip
    fs.rows_ = int(header["rows"])
    for name, span in header["vocabs"].items():
        t = _arrow_table(part(span))
        v: Vocabulary = fs.vocabs_[name]
        v.values_, v.counts_ = t["v"].combine_chunks(), t["c"].to_numpy()
    for name, s in header["quantiles"].items():
        q: Quantiles = fs.quantiles_[name]
        exact = np.frombuffer(part(s["exact"]), dtype="<f8")
        q.count_, q.nulls_ = int(s["count"]), int(s["nulls"])
        q.min_ = np.inf if s["min"] is None else float(s["min"])
        q.max_ = -np.inf if s["max"] is None else float(s["max"])
        q._exact, q._exact_n = ([exact.copy()] if len(exact) else []), len(exact)
        q._sketch = None if s["sketch"] is None else kll_doubles_sketch.deserialize(part(s["sketch"]))
    fs._dirty = True
    return fs


# ----------------------------------------------------------------------------------------------------------------------
# Merging across ranks


def all_gather_bytes(blob: bytes) -> list[bytes]:
    """Every rank's `blob`, in rank order, on every rank (uint8 tensors padded to the longest; no pickling)."""
    rank, size = world()
    if size == 1:
        return [blob]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    x = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
    n = torch.tensor([len(blob)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(sizes, n)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: len(blob)] = x.to(device)
    out = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(out, padded)
    return [o[: int(s.item())].cpu().numpy().tobytes() for o, s in zip(out, sizes)]


# ----------------------------------------------------------------------------------------------------------------------
# The distributed `prepare`


def _agree_bytes(fn: Callable[[], bytes]) -> list[bytes]:
    """Run `fn` on every rank and all-gather its bytes; if it raised on any rank, raise on every rank (naming the rank)
    instead of leaving the others waiting in the next collective."""
    rank, _ = world()
    try:
        blob = b"\x00" + fn()
    except Exception as e:  # re-raised below, on every rank
        blob = b"\x01" + f"rank {rank}: {type(e).__name__}: {e}".encode()
    parts = all_gather_bytes(blob)
    errors = [p[1:].decode() for p in parts if p[:1] == b"\x01"]
    if errors:
        raise ValueError("distributed prepare failed: " + "; ".join(errors))
    return [p[1:] for p in parts]


def _agree(fn: Callable[[], Any]) -> list[Any]:
    """`_agree_bytes` for JSON-able results."""
    return [json.loads(b) for b in _agree_bytes(lambda: json.dumps(fn()).encode())]


def _encode_files(fs: FeatureSet, paths: Sequence[tuple[int, Path]], out: Path) -> list[str]:
    """Encode each (global file index, path) into shards `part-<file>-<batch>`: names sort in the one-process row order."""
    names = []
    for k, path in paths:
        batches = iter_batches([path], [*fs.input_columns, fs.label], types=_read_types(fs), dictionary=True)
        for i, batch in enumerate(batches):
            write_shard(out / f"part-{k:05d}-{i:05d}", fs.transform(batch))
            names.append(f"{out.name}/part-{k:05d}-{i:05d}")
    return names


def prepare_distributed(cfg: Config, force: bool = False, verbose: bool = True) -> Path:
    """`prepare` run by every rank of a torchrun job (a plain `prepare` for one process).

    Rank r checks, fits and encodes files r, r + world, ...; the fitted statistics are merged on every rank; rank 0
    writes features.json and manifest.json (listing every rank's shards) and swaps the folder in once all are done.
    """
    rank, size = world()
    if size == 1:
        return prepare(cfg, force=force, verbose=verbose)
    out = cfg.prepared_dir
    fresh = _agree(lambda: bool(not force and is_fresh(cfg)))[0]
    if fresh:
        if verbose and rank == 0:
            print(f"prepare: {out} is up to date")
        return out
    start = time.perf_counter()
    inputs = _inputs(cfg)
    mine = {s: [(k, p) for k, p in enumerate(inputs[s]) if k % size == rank] for s in SPLITS}
    fs = FeatureSet.from_config(cfg)
    rows = _agree(lambda: check_inputs(fs, {s: [p for _, p in mine[s]] for s in SPLITS}))
    parts = _agree_bytes(lambda: pack_stats(fit(cfg, rank, size)))
    merged = FeatureSet(fs.features, fs.crosses, fs.label)
    for blob in parts:
        merged.merge(unpack_stats(blob, fs))
    fp = fingerprint(cfg)
    merged.info_ = {"fingerprint": fp, "train_files": [str(p) for p in inputs["train"]]}

    def make_work() -> str:
        if rank != 0:
            return ""
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        ordinary_permissions(work)
        merged.save(work / "features.json")
        return str(work)

    work = Path(_agree(make_work)[0])
    try:
        shards = _agree(lambda: {s: _encode_files(merged, mine[s], work / s) for s in SPLITS if inputs[s]})

        def finish() -> None:
            if rank != 0:
                return
            splits = {
                s: {"rows": sum(r[s] for r in rows), "shards": sorted(n for per in shards for n in per[s])}
                for s in SPLITS if inputs[s]
            }  # fmt: skip
            manifest = {
                "fingerprint": fp,
                "features": "features.json",
                "id_slots": list(merged.id_slots),
                "list_slots": list(merged.list_slots),
                "dense_names": list(merged.dense_names),
                "splits": splits,
                "ranks": size,
            }
            (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
            _swap(work, out)

        _agree(finish)
    except BaseException:
        if rank == 0:
            shutil.rmtree(work, ignore_errors=True)
        raise
    if verbose and rank == 0:
        n = sum(r["train"] for r in rows)
        print(f"prepare: {n} train rows on {size} ranks in {time.perf_counter() - start:.1f}s -> {out}")
    return out
