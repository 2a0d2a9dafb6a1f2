"""A synthetic click log with the shape of the Criteo display-ads data, for benchmarks at scale.

Columns: `clicked` (0/1), `C1..C26` categorical strings (8 hex digits, Zipf-distributed, vocabularies from 4 to
100k values, a few with nulls), `I1..I13` heavy-tailed non-negative integer counts with nulls. The click
probability depends on C1..C4, on the C1 x C2 and C3 x C4 pairs and on I1, I2, so models have a mild signal to learn.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from widedeep.config import Config, from_dict
from widedeep.features.hashing import splitmix64

VOCAB = (100_000, 80_000, 50_000, 30_000, 20_000, 10_000, 5_000, 3_000, 2_000, 1_000, 500, 300, 200,
         100, 50, 30, 20, 10, 100_000, 60_000, 25_000, 8_000, 1_500, 400, 40, 4)  # fmt: skip
ZIPF = 1.1
NULL_C = {19: 0.05, 20: 0.2, 21: 0.4, 22: 0.05, 23: 0.3, 24: 0.1, 25: 0.02}  # column index -> null rate
NULL_I = (0.45, 0.0, 0.2, 0.2, 0.02, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.2)


def _hex_tokens(col: int, n: int) -> pa.Array:
    """n distinct 8-hex-digit strings for column `col`, built directly as an Arrow buffer (no Python strings)."""
    h = splitmix64(np.arange(n, dtype=np.uint64) + np.uint64(col << 40)) >> np.uint64(32)
    nibbles = (h[:, None] >> (np.uint64(4) * np.arange(7, -1, -1, dtype=np.uint64))) & np.uint64(15)
    chars = np.frombuffer(b"0123456789abcdef", np.uint8)[nibbles.astype(np.int64)]
    offsets = np.arange(0, 8 * n + 1, 8, dtype=np.int32)
    tokens = pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(chars.tobytes()))
    if len(pc.unique(tokens)) != n:  # 32-bit prefixes collide in rare cases: disambiguate by suffixing
        tokens = pa.array([f"{t}{i}" for i, t in enumerate(tokens.to_pylist())], pa.string())
    return tokens


def _effect(ranks: np.ndarray, salt: int, scale: float) -> np.ndarray:
    """A fixed pseudo-random effect in [-scale, scale] for each value (by rank)."""
    u = splitmix64(ranks.astype(np.uint64) ^ np.uint64(salt)) >> np.uint64(11)
    return (u.astype(np.float64) / 2.0**53 * 2 - 1) * scale


def criteo_like(n_rows: int, seed: int = 0, chunk_rows: int = 1 << 18) -> Iterator[pa.Table]:
    """Yield the log in tables of at most `chunk_rows` rows (the same rows for the same seed and chunk_rows)."""
    tokens = [_hex_tokens(j, v) for j, v in enumerate(VOCAB)]
    cdfs = []
    for v in VOCAB:
        p = np.arange(1, v + 1, dtype=np.float64) ** -ZIPF
        cdfs.append(np.cumsum(p) / p.sum())
    for start in range(0, n_rows, chunk_rows):
        n = min(chunk_rows, n_rows - start)
        rng = np.random.default_rng([seed, start])
        cols, logit = {}, np.full(n, -1.3)
        for j, (v, cdf) in enumerate(zip(VOCAB, cdfs)):
            r = np.minimum(np.searchsorted(cdf, rng.random(n)), v - 1)
            cols[j] = r
            mask = rng.random(n) < NULL_C[j] if j in NULL_C else None
            cols[f"C{j + 1}"] = tokens[j].take(pa.array(r, mask=mask))  # a null index takes a null
        for j in range(4):
            logit += _effect(cols[j], 11 + j, 0.6)
        logit += _effect(cols[0] * 1_000_003 + cols[1], 101, 0.8) + _effect(cols[2] * 1_000_003 + cols[3], 102, 0.8)
        ints = {}
        for j, rate in enumerate(NULL_I):
            x = np.floor(rng.lognormal(1.0 + 0.2 * j, 1.0 + 0.1 * j, n)).astype(np.int64)
            null = rng.random(n) < rate
            ints[f"I{j + 1}"] = pa.array(x, pa.int64(), mask=null)
            if j < 2:
                logit += np.where(null, 0.0, 0.25 * (np.log1p(x) - 1.5))
        clicked = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
        data = {"clicked": pa.array(clicked)}
        data.update({f"I{j + 1}": ints[f"I{j + 1}"] for j in range(13)})
        data.update({f"C{j + 1}": cols[f"C{j + 1}"] for j in range(26)})
        yield pa.table(data)


def write_criteo_like(path: str | Path, n_rows: int, seed: int = 0) -> Path:
    """Write the log to one Parquet file (streamed chunk by chunk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for t in criteo_like(n_rows, seed):
            writer = writer or pq.ParquetWriter(path, t.schema)
            writer.write_table(t)
    finally:
        if writer is not None:
            writer.close()
    return path


def criteo_like_toml(train: str, eval: str = "", out: str = "runs/criteo_like", embed_buckets: bool = True) -> str:
    """The config of the benchmark: 26 categorical + 13 continuous features, crosses C1 x C2 and C3 x C4 (1M buckets).
    `embed_buckets=False` writes `embed_buckets = false` (the paper's deep input: continuous values only); True leaves the
    library's default."""
    lines = ["[data]", f"train = {str(train)!r}", f"eval = {str(eval)!r}" if eval else "", 'label = "clicked"', ""]
    for j in range(1, 27):
        lines += [f"[features.C{j}]", 'type = "categorical"', "min_count = 2", ""]
    for j in range(1, 14):
        lines += [f"[features.I{j}]", 'type = "continuous"', "quantiles = 100"] + ([] if embed_buckets else ["embed_buckets = false"]) + [""]
    for a, b in (("C1", "C2"), ("C3", "C4")):
        lines += [f"[crosses.{a}_x_{b}]", f'columns = ["{a}", "{b}"]', "buckets = 1000000", ""]
    cats = ", ".join(f'"C{j}"' for j in range(1, 27))
    nums = ", ".join(f'"I{j}"' for j in range(1, 14))
    lines += ["[model]", 'type = "wide_deep"', f'wide = ["C1_x_C2", "C3_x_C4", {cats}]', f"deep = [{cats}, {nums}]"]
    lines += ["embedding_dim = 16", "hidden = [256, 128, 64]", "", "[train]", "batch_size = 4096", f"out = {str(out)!r}"]
    return "\n".join(lines) + "\n"


def criteo_like_config(
    train: str | Path, eval: str | Path = "", out: str | Path = "runs/criteo_like", embed_buckets: bool = True
) -> Config:
    """A validated Config for the benchmark schema (use absolute paths, or paths relative to the current folder)."""
    text = criteo_like_toml(str(train), str(eval) if eval else "", str(out), embed_buckets)
    return from_dict(tomllib.loads(text), Path.cwd() / "criteo_like.toml")
