"""Ranking latency of the paper-configuration model: the paper's Table 2 (sub-batch x threads) in process and over HTTP.

Builds an untrained artifact with the paper's deep shape on the Criteo-like schema (26 categorical features x 32-d
embeddings, 13 continuous, MLP 1024-512-256, wide part over the categorical ids and two crosses; weights do not matter for
latency), then runs `widedeep bench-serve` on it. A request is one user context (C1..C13, I1..I6) and 200 candidates
(C14..C26, I7..I13). Target on 2 cores: p50 <= 5 ms, p99 <= 10 ms over HTTP at 200 candidates.

    python benchmarks/serve.py                     # the full table (about a minute), in the precision auto picks
    python benchmarks/serve.py --precision int8    # the same with int8 MLP weights (fp32, bf16 likewise)
    python benchmarks/serve.py --smoke         # seconds; checks the script still runs
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import torch
from _machine import print_machine

from widedeep.artifact import save_model
from widedeep.datasets.criteo_like import criteo_like, criteo_like_config
from widedeep.features.transform import FeatureSet
from widedeep.model.wide_deep import WideDeep
from widedeep.serve.bench import bench_serve
from widedeep.serve.settings import PRECISION, PRECISIONS

CONTEXT = [f"C{j}" for j in range(1, 14)] + [f"I{j}" for j in range(1, 7)]


def paper_model(out: Path, rows: int, hidden: tuple[int, ...] = (1024, 512, 256), seed: int = 0) -> Path:
    """An untrained paper-configuration model directory fitted on `rows` synthetic Criteo-like rows."""
    cfg = criteo_like_config("unused.parquet", out=str(out.parent))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, embedding_dim=32, hidden=hidden))
    table = pa.concat_tables(criteo_like(rows, seed=seed))
    fs = FeatureSet.from_config(cfg).fit(table)
    torch.manual_seed(seed)
    module = WideDeep.build(cfg.model, fs)
    with torch.no_grad():
        module.wide.table.weight[1:].normal_(0, 0.01)  # FTRL starts the wide weights at 0; give them values
    return save_model(out, module, fs, cfg, {"note": "untrained, for latency benchmarks"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="where to build the model (default: a temporary folder)")
    p.add_argument("--rows", type=int, default=50_000, help="rows the vocabularies and quantiles are fitted on")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--backend", default=None, help="hybrid (default where onnxruntime is installed), torch or onnxruntime")
    p.add_argument("--precision", choices=PRECISIONS, default=PRECISION, help="the MLP's precision (default: %(default)s, the server's)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    args = p.parse_args(argv)
    print_machine()
    with tempfile.TemporaryDirectory(prefix="widedeep-bench-serve-") as tmp:
        root = (args.out or Path(tmp)).resolve()
        if args.smoke:
            model = paper_model(root / "model", rows=300, hidden=(16,))
            result = bench_serve(model, candidates=20, splits=((20, 1), (10, 2)), http_splits=((10, 2),), requests=6,
                                 warmup=1, clients=2, seconds=0.3, context_columns=CONTEXT, backend=args.backend,
                                 precision=args.precision, log=_err)  # fmt: skip
        else:
            model = paper_model(root / "model", rows=args.rows)
            result = bench_serve(model, requests=args.requests, context_columns=CONTEXT, backend=args.backend, precision=args.precision,
                                 log=_err)
        print(result.markdown())
        if not args.smoke:
            best = min(result.http.values(), key=lambda lat: lat.p50)
            print(f"\nTarget (2 cores): HTTP p50 <= 5 ms and p99 <= 10 ms; best split here: p50 {best.p50:.1f} ms, p99 {best.p99:.1f} ms.")
    return 0


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
