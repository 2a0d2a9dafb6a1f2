"""Distributed `prepare` under torchrun: each rank fits its part of the training files, the parts' statistics are merged.

Vocabulary counts merge exactly and quantile statistics merge as exact values (below `Quantiles.exact_limit`) or as KLL
sketches, so the merged FeatureSet is the one a single process fits: identical vocabularies, identical boundaries in
the exact regime, boundaries within the sketch's rank error (~0.14%) beyond it. The statistics travel between ranks as
bytes (Arrow IPC for token counts, raw float64 / KLL serialization for quantiles) in `all_gather`ed uint8 tensors,
never pickled.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from datasketches import kll_doubles_sketch

from widedeep.features.quantile import Quantiles
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


def merge_ranks(fs: FeatureSet) -> FeatureSet:
    """Merge every rank's partial statistics (in rank order) into a new FeatureSet, identical on every rank, unfinalized."""
    parts = all_gather_bytes(pack_stats(fs))
    merged = FeatureSet(fs.features, fs.crosses, fs.label)
    for blob in parts:
        merged.merge(unpack_stats(blob, fs))
    return merged
