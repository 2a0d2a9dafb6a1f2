"""Throughput and memory of the app-store simulator: rows per second streamed, and whether memory stays flat.

Generates N rows in chunks and writes them to Parquet parts (as `write_app_store` does), in a fresh process. Memory is
bounded when the peak RSS after all rows is close to the peak after the first tenth: the ratio printed should be ~1.
Throughput is compared, in the same run, with writing an already generated chunk to Parquet again and again (the
I/O floor no generator beats).

    python benchmarks/app_store.py                 # 10M rows
    python benchmarks/app_store.py --rows 2000000
    python benchmarks/app_store.py --smoke         # 50k rows, a few seconds (run by the tests)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import print_machine

MEMORY_BOUND = 1.5  # peak RSS after all rows / peak RSS after the first tenth


def child(rows: int, out: str) -> None:
    """In a fresh process: stream `rows` rows to Parquet; print timings and peak RSS as JSON."""
    import pyarrow.parquet as pq

    from widedeep.datasets.app_store import SCHEMA, app_store, world

    start = time.perf_counter()
    world(0)
    world_s = time.perf_counter() - start
    tenth, rss_tenth, done, first = max(rows // 10, 1), 0, 0, None
    start = time.perf_counter()
    with pq.ParquetWriter(Path(out) / "rows.parquet", SCHEMA, compression="zstd") as writer:
        for chunk in app_store(rows, 0, chunk_rows=65_536):
            writer.write_table(chunk)
            first = first or chunk
            done += chunk.num_rows
            if not rss_tenth and done >= tenth:
                rss_tenth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gen_s = time.perf_counter() - start
    rss_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pq.ParquetWriter(Path(out) / "floor.parquet", SCHEMA, compression="zstd") as writer:
        for _ in range(max(rows // first.num_rows, 1)):
            writer.write_table(first)
    floor_s = (time.perf_counter() - start) * rows / (max(rows // first.num_rows, 1) * first.num_rows)
    print(json.dumps({"world_s": world_s, "gen_s": gen_s, "floor_s": floor_s, "rss_tenth_kb": rss_tenth, "rss_end_kb": rss_end}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--smoke", action="store_true", help="50k rows: checks the script runs")
    ap.add_argument("--child", nargs=2, metavar=("ROWS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1])
        return
    rows = 50_000 if args.smoke else args.rows
    print_machine()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, __file__, "--child", str(rows), tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"benchmark child failed with exit code {proc.returncode}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
    memory = r["rss_end_kb"] / r["rss_tenth_kb"]
    print(
        f"app_store: {rows:,} rows in {r['gen_s']:.1f} s ({rows / r['gen_s']:,.0f} rows/s; world {r['world_s']:.1f} s) | "
        f"{r['gen_s'] / r['floor_s']:.2f} x the Parquet-write floor ({r['floor_s']:.1f} s) | "
        f"peak RSS {r['rss_end_kb'] / 1024:.0f} MiB, {memory:.2f} x the peak after 10% (bound {MEMORY_BOUND})"
    )
    if not args.smoke and memory > MEMORY_BOUND:
        raise SystemExit(f"memory grew {memory:.2f} x while streaming (bound {MEMORY_BOUND})")


if __name__ == "__main__":
    main()
