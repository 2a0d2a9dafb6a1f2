"""Encoded shards on disk: one folder of .npy files per part, written atomically and read back by memory map.

Layout (docs/design.md): ids.npy (N, S) int32, dense.npy (N, C) float32, label.npy (N,) uint8, and for each list
slot <slot>.values.npy int32 and <slot>.offsets.npy int64; meta.json records the row count and the list slots.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from widedeep.atomic import publish_dir, write_text_synced
from widedeep.features.encoded import Encoded


def _safe(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"slot name {name!r} cannot be used as a file name")
    return name


def write_shard(path: str | Path, enc: Encoded) -> Path:
    """Write `enc` into folder `path` (which must not exist), published whole (`atomic.publish_dir`) or not at all."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: shard already exists")
    with publish_dir(path, replace=False) as tmp:
        np.save(tmp / "ids.npy", np.ascontiguousarray(enc.ids, dtype=np.int32))
        np.save(tmp / "dense.npy", np.ascontiguousarray(enc.dense, dtype=np.float32))
        if enc.label is not None:
            np.save(tmp / "label.npy", np.ascontiguousarray(enc.label, dtype=np.uint8))
        for name, (values, offsets) in enc.lists.items():
            np.save(tmp / f"{_safe(name)}.values.npy", np.ascontiguousarray(values, dtype=np.int32))
            np.save(tmp / f"{name}.offsets.npy", np.ascontiguousarray(offsets, dtype=np.int64))
        meta = {"rows": len(enc), "lists": list(enc.lists), "label": enc.label is not None}
        write_text_synced(tmp / "meta.json", json.dumps(meta, indent=1))
    return path


def open_shard(path: str | Path) -> Encoded:
    """Memory-map one shard (read-only)."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())

        def load(name: str) -> np.ndarray:
            return np.load(path / name, mmap_mode="r", allow_pickle=False)

        lists = {n: (load(f"{n}.values.npy"), load(f"{n}.offsets.npy")) for n in meta["lists"]}
        enc = Encoded(load("ids.npy"), load("dense.npy"), lists, load("label.npy") if meta["label"] else None)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: unreadable shard: {e}") from None
    if len(enc) != meta["rows"] or enc.dense.shape[0] != meta["rows"]:
        raise ValueError(f"{path}: shard has {len(enc)} rows, meta.json says {meta['rows']}")
    return enc


def shard_dirs(prepared_dir: str | Path, split: str) -> list[Path]:
    root = Path(prepared_dir) / split
    return sorted(p for p in root.glob("part-*") if p.is_dir()) if root.is_dir() else []


def open_split(prepared_dir: str | Path, split: str) -> list[Encoded]:
    """All shards of a split ("train" or "eval"), in order; an empty list when the split has none."""
    return [open_shard(p) for p in shard_dirs(prepared_dir, split)]
