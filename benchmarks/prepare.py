"""Throughput and peak memory of `widedeep prepare` (fit + encode): (a) app-store data, (b) a Criteo-like log.

(b) has 26 Zipf-distributed categorical columns (vocabularies up to 100k), 13 heavy-tailed numeric columns with nulls
and 2 crosses hashed into 1M buckets. Target: 1M training rows of (b) fitted and encoded in <= 6 s on 2 cores.
Each prepare runs in its own process; its peak RSS comes from the kernel (wait4 rusage). In the same process the
script also times reading the same columns with pyarrow (the I/O floor no encoder can beat), for a ratio that does not
depend on the machine.

    python benchmarks/prepare.py                 # 1M train + 100k eval rows of each dataset
    python benchmarks/prepare.py --rows 200000
    python benchmarks/prepare.py --smoke         # 20k rows, a few seconds (run by the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from _machine import print_machine

TARGET_S_PER_M = 6.0  # seconds per 1M training rows of (b)


def child(config: str) -> None:
    """Run in a fresh process: read floor, then prepare(force=True); print the timings as JSON."""
    import pyarrow.parquet as pq

    from widedeep.config import load
    from widedeep.features.io import resolve_paths
    from widedeep.features.prepare import prepare
    from widedeep.features.transform import FeatureSet

    cfg = load(config)
    cols = [*FeatureSet.from_config(cfg).input_columns, cfg.data.label]
    files = resolve_paths(cfg.data.train, cfg.root) + resolve_paths(cfg.data.eval, cfg.root)
    start = time.perf_counter()
    for f in files:  # the cheapest read: string columns stay dictionary-encoded, as prepare reads them
        strings = [c for c in cols if pq.read_schema(f).field(c).type == "string"]
        pq.read_table(f, columns=cols, read_dictionary=strings)
    floor = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    prepare(cfg, force=True, verbose=False)
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "read_floor": floor}))


def measure(config: Path) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(config)], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"prepare failed for {config}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": usage.ru_maxrss / 1024}


def report(name: str, rows: int, eval_rows: int, r: dict, target_s: float | None) -> None:
    line = (
        f"{name}: {rows:,} train + {eval_rows:,} eval rows in {r['seconds']:.2f} s "
        f"({rows / r['seconds']:,.0f} train rows/s, cpu {r['cpu']:.2f} s), peak RSS {r['peak_rss_mb']:.0f} MB, "
        f"{r['seconds'] / r['read_floor']:.1f}x the time to just read the columns ({r['read_floor']:.2f} s)"
    )
    if target_s is not None:
        line += f"; target {target_s:.2f} s -> {r['seconds'] / target_s:.2f}x target"
    print(line, flush=True)


def criteo(root: Path, rows: int, eval_rows: int) -> None:
    from widedeep.datasets.criteo_like import criteo_like_toml, write_criteo_like

    start = time.perf_counter()
    write_criteo_like(root / "train.parquet", rows, seed=0)
    write_criteo_like(root / "eval.parquet", eval_rows, seed=1)
    print(f"(b) criteo-like: generated in {time.perf_counter() - start:.1f} s (not timed)", flush=True)
    (root / "config.toml").write_text(criteo_like_toml("train.parquet", "eval.parquet", "run"))
    report("(b) criteo-like", rows, eval_rows, measure(root / "config.toml"), TARGET_S_PER_M * rows / 1e6)


def app_store(root: Path, rows: int, eval_rows: int) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "appstore.toml"
    try:
        from widedeep.datasets.app_store import write_app_store
    except ImportError:
        print("(a) app-store: skipped (widedeep.datasets.app_store is not available)")
        return
    if not example.is_file():
        print(f"(a) app-store: skipped ({example} does not exist)")
        return
    start = time.perf_counter()
    train, eval_path = write_app_store(root / "data", rows, eval_rows, seed=0)
    print(f"(a) app-store: generated in {time.perf_counter() - start:.1f} s (not timed)", flush=True)
    raw = tomllib.loads(example.read_text())
    lines = ["[data]", f"train = {str(root / 'data' / 'train')!r}", f"eval = {str(eval_path)!r}"]
    lines += [f"label = {raw['data']['label']!r}", f"prepared = {str(root / 'prepared')!r}", ""]
    body = example.read_text()
    rest = body[body.index("\n[features") :]
    (root / "config.toml").write_text("\n".join(lines) + "\n" + rest)
    report("(a) app-store", rows, eval_rows, measure(root / "config.toml"), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="training rows (eval gets a tenth)")
    p.add_argument("--smoke", action="store_true", help="20k rows: checks that the benchmark runs")
    p.add_argument("--only", choices=("a", "b"), default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child)
    rows = 20_000 if args.smoke else args.rows
    print_machine()
    with tempfile.TemporaryDirectory(prefix="widedeep-bench-") as tmp:
        if args.only in (None, "a"):
            (Path(tmp) / "a").mkdir()
            app_store(Path(tmp) / "a", rows, rows // 10)
        if args.only in (None, "b"):
            (Path(tmp) / "b").mkdir()
            criteo(Path(tmp) / "b", rows, rows // 10)


if __name__ == "__main__":
    main()
