"""Wall time of `widedeep demo` against its bound (3 minutes on 2 CPU cores) and whether wide & deep wins.

Runs the demo in a fresh process (as a user would) with torch limited to the given number of threads, then prints
the wall time, its ratio to the bound, the three eval AUCs and the winner.

    python benchmarks/demo.py                  # the default demo size (datasets.app_store.DEMO_ROWS)
    python benchmarks/demo.py --threads 2      # as on a 2-core machine
    python benchmarks/demo.py --smoke          # 2,000 rows, a few seconds (run by the tests; checks that it runs, not the bound)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import print_machine

BOUND_S = 180.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=None, help="training rows (default: the demo size)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the bound's machine)")
    ap.add_argument("--smoke", action="store_true", help="2,000 rows: checks the script runs")
    args = ap.parse_args()
    rows = 2_000 if args.smoke else args.rows
    print_machine()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        cmd = [sys.executable, "-m", "widedeep", "demo", "--out", str(out), "--device", "cpu"]
        cmd += ["--rows", str(rows)] if rows else []
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"demo failed with exit code {proc.returncode}")
        result = json.loads((out / "compare.json").read_text())
    aucs = {k: v["auc"] for k, v in result["models"].items()}
    print(
        f"demo ({'smoke, ' if args.smoke else ''}{rows or 'default'} rows, {args.threads} threads): {seconds:.1f} s wall, "
        f"{seconds / BOUND_S:.2f} x the {BOUND_S:.0f} s bound | eval AUC "
        + ", ".join(f"{k} {v:.4f}" for k, v in aucs.items())
        + f" | winner: {result['winner']}"
    )


if __name__ == "__main__":
    main()
