"""`widedeep prepare`: check the inputs, fit the FeatureSet in one streaming pass, encode train/eval into shards.

One body serves one process and the ranks of a torchrun job (a `Group`): each rank checks, fits and encodes its share of
the files (every N-th one); the ranks' statistics are merged, so every rank holds the FeatureSet one process would fit.
Rank 0 writes features.json and manifest.json into a temp folder beside the prepared folder, which replaces it only once
complete (`atomic.publish_dir`): a crash leaves either the previous complete result or none. `manifest.json` holds a
fingerprint of the feature config and of every input file (path, size, mtime); a later call with the same fingerprint
does nothing. Shard `part-<file>-<batch>` holds one batch of one input file, so names sort in row order.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pyarrow as pa

from widedeep.atomic import publish_dir, remove_stale, write_text_synced
from widedeep.config import Config
from widedeep.features.checks import Profile, add_counts, check_inputs, check_labels, warn
from widedeep.features.group import Group
from widedeep.features.io import iter_batches, resolve_paths
from widedeep.features.packed import merge_packed, pack_stats
from widedeep.features.shards import write_shard
from widedeep.features.transform import VERSION, FeatureSet

SPLITS = ("train", "eval", "test")
# Training batches kept between the fit and the encode pass, so the encode pass need not read the files again (reading
# is the largest single cost). Bounded: beyond it nothing is kept and peak memory stays flat in the data size.
CACHE_BYTES = 256 << 20
# Below this many rows (train + eval) prepare runs in the calling thread: every column then takes a few milliseconds and
# thread hand-offs cost more than they overlap (Adult, 49k rows: 0.15 s serial vs 0.20 s with the pools, cold process).
SERIAL_ROWS = 100_000

Files = Sequence[tuple[int, Path]]  # (index among the split's files, path)
Named = tuple[str, pa.RecordBatch]  # (shard name, batch)


def _inputs(cfg: Config) -> dict[str, list[Path]]:
    out = {"train": resolve_paths(cfg.data.train, cfg.root, f"{cfg.path}: [data] train")}
    for split in ("eval", "test"):
        spec = getattr(cfg.data, split)
        out[split] = resolve_paths(spec, cfg.root, f"{cfg.path}: [data] {split}") if spec else []
    return out


def fingerprint(cfg: Config) -> str:
    """sha256 of the feature config (features, crosses, label) and each input file's path, size and mtime."""
    files = {}
    for split, paths in _inputs(cfg).items():
        files[split] = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    doc = {
        "version": VERSION,
        "features": [asdict(f) for f in cfg.features],
        "crosses": [asdict(c) for c in cfg.crosses],
        "label": cfg.data.label,
        "files": files,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def is_fresh(cfg: Config) -> bool:
    """True when the prepared folder is complete and was made from this feature config and these input files."""
    out = cfg.prepared_dir
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        fp = fingerprint(cfg)
    except (OSError, ValueError):
        return False
    shards = [out / s for split in manifest.get("splits", {}).values() for s in split.get("shards", [])]
    return manifest.get("fingerprint") == fp and (out / "features.json").is_file() and all(s.is_dir() for s in shards)


# ----------------------------------------------------------------------------------------------------------------------
# Reading, fitting, encoding


def _read(fs: FeatureSet, files: Files, pool: Executor | None) -> Iterator[Named]:
    """The files' batches, each with its shard name; with a pool, the next batch is read while the caller works."""

    def batches() -> Iterator[Named]:
        for k, path in files:
            read = iter_batches([path], [*fs.input_columns, fs.label], types=fs.read_types(), dictionary=True)
            for i, batch in enumerate(read):
                yield f"part-{k:05d}-{i:05d}", batch

    return _prefetch(batches()) if pool is not None else batches()


def _prefetch(batches: Iterator[Named]) -> Iterator[Named]:
    """Read the next batch in a background thread while the caller works on the current one."""
    with ThreadPoolExecutor(1) as reader:
        ahead = reader.submit(next, batches, None)
        while (item := ahead.result()) is not None:
            ahead = reader.submit(next, batches, None)
            yield item


def _fit(fs: FeatureSet, profile: Profile, files: Files, pool: Executor | None, cache_bytes: int) -> list[Named] | None:
    """Fit `fs` (and `profile`) on the files, keeping the batches read (dictionary-encoded) while they fit in
    `cache_bytes`, so the encode pass need not read the files again. Returns them, or None when they did not fit."""
    cache: list[Named] | None = []
    size = 0
    for name, batch in _read(fs, files, pool):
        fs.partial_fit(batch, pool)
        profile.observe(batch)
        if cache is not None:
            size += batch.nbytes
            if size <= cache_bytes:
                cache.append((name, batch))
            else:
                cache = None
    return cache


def _drain(batches: list[Named]) -> Iterator[Named]:
    """Yield the cached batches in order, letting go of each one as it is taken (memory falls as encoding goes)."""
    batches.reverse()
    while batches:
        yield batches.pop()


def _encode(fs: FeatureSet, batches: Iterable[Named], out: Path, pool: Executor | None) -> list[str]:
    """Encode batches into shards out/<name>; with a pool, each shard is written while the next is encoded."""
    names: list[str] = []
    with ThreadPoolExecutor(1) if pool is not None else nullcontext() as writer:
        pending: Future | None = None
        for name, batch in batches:
            enc = fs.transform(batch, pool)
            if pending is not None:
                pending.result()
            if writer is None:
                write_shard(out / name, enc)
            else:
                pending = writer.submit(write_shard, out / name, enc)
            names.append(f"{out.name}/{name}")
        if pending is not None:
            pending.result()
    return names


def _manifest(fs: FeatureSet, fp: str, rows: dict[str, int], shards: list[dict[str, list[str]]], ranks: int) -> dict:
    """manifest.json: fingerprint, slot layout, and each split's rows and shards (every rank's, in row order)."""
    splits = {s: {"rows": rows[s], "shards": sorted(n for part in shards for n in part[s])} for s in shards[0]}
    return {
        "fingerprint": fp,
        "features": "features.json",
        "id_slots": list(fs.id_slots),
        "list_slots": list(fs.list_slots),
        "dense_names": list(fs.dense_names),
        "splits": splits,
        "ranks": ranks,
    }


# ----------------------------------------------------------------------------------------------------------------------
# prepare


def prepare(
    cfg: Config, force: bool = False, verbose: bool = True, cache_bytes: int = CACHE_BYTES, group: Group = Group()
) -> Path:
    """Fit features on the training data and encode train/eval into `cfg.prepared_dir` (skipped when fresh).

    Every rank of `group` calls it (one process by default) and returns once the folder is in place. With
    `cache_bytes` > 0, training batches read by the fit pass are kept in memory up to that size and encoded from there
    instead of being read again; memory stays bounded by the cache plus a few batches."""
    out = cfg.prepared_dir
    remove_stale(out.parent)  # temp folders of dead processes; those of live ones are kept
    if group.gather(group.run(lambda: not force and is_fresh(cfg)))[0]:  # rank 0's view decides for all
        if verbose and group.rank == 0:
            print(f"prepare: {out} is up to date")
        return out
    start = time.perf_counter()
    inputs = _inputs(cfg)
    fp = fingerprint(cfg)  # before reading: a file changed meanwhile makes the result stale, not wrongly fresh
    mine = {s: group.share(list(enumerate(inputs[s]))) for s in SPLITS}
    part = FeatureSet.from_config(cfg)

    # Check this rank's files; refuse single-class training labels before anything is written.
    counts = group.run(lambda: check_inputs(part, {s: [p for _, p in mine[s]] for s in SPLITS}))
    counts = add_counts(group.gather(counts))
    problems = check_labels(part.label, counts, inputs)
    rows = {s: counts[s]["rows"] for s in SPLITS}
    threads = min(4, (os.cpu_count() or 1) // group.size) if sum(rows.values()) >= SERIAL_ROWS else 0
    with ThreadPoolExecutor(threads) if threads else nullcontext() as pool:
        # Fit on this rank's training files, then merge the statistics of every rank (one process: nothing to merge).
        profile = Profile(part.features)
        cached = group.run(lambda: _fit(part, profile, mine["train"], pool, cache_bytes))
        fs = part if group.size == 1 else merge_packed(group.all_gather(pack_stats(part)), like=part)
        problems += Profile.merged(fs.features, group.gather(profile.state_)).problems(inputs["train"])
        if group.rank == 0:  # every rank knows the same; one says it
            warn(problems)
        fs.info_ = {"fingerprint": fp, "train_files": [str(p) for p in inputs["train"]]}

        with ExitStack() as publish:
            # Rank 0 opens the temp folder and writes features.json; every rank encodes its files into it.
            def open_work() -> str:
                if group.rank != 0:
                    return ""
                work = publish.enter_context(publish_dir(out))
                fs.save(work / "features.json")
                return str(work)

            work = Path(group.gather(group.run(open_work))[0])

            def encode() -> dict[str, list[str]]:
                shards = {}
                for s in SPLITS:
                    if inputs[s]:
                        batches = _drain(cached) if s == "train" and cached is not None else _read(fs, mine[s], pool)
                        shards[s] = _encode(fs, batches, work / s, pool)
                return shards

            shards = group.gather(group.run(encode))

            # Rank 0 lists every shard in manifest.json and renames the folder into place; all return once it is there.
            def finish() -> None:
                if group.rank == 0:
                    manifest = _manifest(fs, fp, rows, shards, group.size)
                    write_text_synced(work / "manifest.json", json.dumps(manifest, indent=1))
                    publish.close()

            group.run(finish)
    if verbose and group.rank == 0:
        _report(fs, rows, time.perf_counter() - start, out, group.size)
    return out


def _report(fs: FeatureSet, rows: dict[str, int], took: float, out: Path, ranks: int) -> None:
    sizes = ", ".join(f"{f.name}={n}" for f, n in zip(fs.features, fs.cardinality.values()) if f.type != "hashed")
    on = f" on {ranks} ranks" if ranks > 1 else ""
    test = f" + {rows['test']} test" if rows["test"] else ""
    print(f"prepare: {rows['train']} train + {rows['eval']} eval{test} rows{on} in {took:.1f}s -> {out}")
    print(f"prepare: table sizes {sizes}")
