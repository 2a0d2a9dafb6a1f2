"""Out-of-core check: peak RSS of `widedeep prepare` and of one training epoch on 1M and on 10M app-store rows.

Each stage runs as its own process (`python -m widedeep ...`) and its peak resident set size comes from the kernel
(`wait4` rusage, ru_maxrss), so it counts everything: Python, torch, Arrow buffers and the pages of memory-mapped shards.
The target is a peak below 1 GiB for every stage and the largest run within 10% of the smallest one.

    python benchmarks/out_of_core.py                       # 1M and 10M rows (several minutes and ~2 GB of disk per 10M)
    python benchmarks/out_of_core.py --rows 1000000 3000000
    python benchmarks/out_of_core.py --stages prepare      # only `prepare`
    python benchmarks/out_of_core.py --light-model         # a tiny model: the epoch measures data streaming, fast on CPU
    python benchmarks/out_of_core.py --smoke               # 20k rows, small model, in runs/out_of_core_smoke (run by the tests)

Every path given to a stage's process is absolute: each process runs in its own folder (`--out`/rows-N).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _machine import print_machine

BOUND_MB = 1024.0
SPREAD = 0.10

CONFIG = """
[data]
train = "data/train"
eval = "data/eval.parquet"
label = "installed"

[features.country]
type = "categorical"
[features.device]
type = "categorical"
[features.user_id]
type = "hashed"
buckets = 100000
[features.installed_apps]
type = "categorical"
multi_valued = true
[features.impression_app]
type = "categorical"
[features.app_category]
type = "categorical"
[features.age]
type = "continuous"
[features.app_price]
type = "continuous"

[crosses.installed_x_impression]
columns = ["installed_apps", "impression_app"]
buckets = 1000000

{model}

[train]
batch_size = {batch}
epochs = 1
out = "run"
device = "cpu"
bf16 = "off"
"""


MODEL = """
[model]
type = "wide_deep"
wide = ["installed_x_impression", "impression_app"]
deep = ["country", "device", "user_id", "installed_apps", "impression_app", "app_category", "age", "app_price"]
embedding_dim = {dim}
hidden = {hidden}
"""

# Every declared feature and cross is still encoded and every batch still gathers all of them from the shards: this
# model only makes the compute per step small, so that an epoch measures the streaming of the data.
LIGHT_MODEL = """
[model]
type = "deep"
deep = ["country", "age"]
embedding_dim = 4
hidden = [8]
"""


def run_measured(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run `cmd` to completion; (peak RSS in MB of that process, wall seconds). Raises with its stderr if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    log = cwd / f"{cmd[3]}.log"  # output goes to a file: a pipe nobody reads until the end would block the child
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        # wait4 gives this child's own rusage (a sibling's peak cannot leak in, as it would with RUSAGE_CHILDREN).
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        tail = log.read_bytes()[-4000:].decode(errors="replace")
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {p.returncode} (log: {log}):\n{tail}")
    return usage.ru_maxrss / 1024.0, time.perf_counter() - t0  # ru_maxrss is in KiB on Linux


def make_run(root: Path, rows: int, eval_rows: int, smoke: bool, light: bool = False) -> Path:
    """Write `rows` training impressions (1M per file) and a fixed-size eval set, and a config; reuse them if present."""
    from widedeep.datasets.app_store import write_app_store

    data = root / "data"
    stamp = data / "rows.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != {"train": rows, "eval": eval_rows}:
        write_app_store(data, rows, eval_rows, seed=0, rows_per_file=min(rows, 1_000_000))
        stamp.write_text(json.dumps({"train": rows, "eval": eval_rows}))
    dim, hidden, batch = (8, [32, 16], 512) if smoke else (16, [128, 64], 4096)
    model = MODEL.format(dim=dim, hidden=hidden)
    if light:
        model, batch = LIGHT_MODEL, 8192
    cfg = root / "config.toml"
    cfg.write_text(CONFIG.format(model=model, batch=batch))
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--eval-rows", type=int, default=50_000)
    ap.add_argument("--out", type=Path, default=None, help="default: runs/out_of_core (runs/out_of_core_smoke with --smoke)")
    ap.add_argument("--stages", nargs="+", choices=("prepare", "train"), default=["prepare", "train"])
    ap.add_argument("--light-model", action="store_true", help="train a tiny deep model (same data streamed), for slow machines")
    ap.add_argument("--smoke", action="store_true", help="20k rows: a quick check that the benchmark runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rows, args.eval_rows = [20_000], 2_000
    # Absolute: each stage's process runs with its run folder as cwd, where a path relative to ours would not resolve.
    out = (args.out or Path("runs/out_of_core_smoke" if args.smoke else "runs/out_of_core")).resolve()
    print_machine()
    py = sys.executable
    results: list[dict] = []
    for n in args.rows:
        root = out / f"rows-{n}"
        cfg = make_run(root, n, args.eval_rows, args.smoke, args.light_model)
        r: dict = {"rows": n}
        if "prepare" in args.stages:
            r["prepare_mb"], r["prepare_s"] = run_measured([py, "-m", "widedeep", "prepare", str(cfg), "--force"], root)
            print(f"{n:>11,} rows | prepare       | peak RSS {r['prepare_mb']:7.1f} MB | {r['prepare_s']:7.1f} s", flush=True)
        if "train" in args.stages:
            r["train_mb"], r["train_s"] = run_measured([py, "-m", "widedeep", "train", str(cfg), "--device", "cpu"], root)
            metrics = json.loads((root / "run" / "model" / "model.json").read_text()).get("metrics", {})
            r["ex_per_s"], r["eval_auc"] = metrics.get("examples_per_s"), (metrics.get("eval") or {}).get("auc")
            print(f"{n:>11,} rows | train 1 epoch | peak RSS {r['train_mb']:7.1f} MB | {r['train_s']:7.1f} s | "
                  f"{r['ex_per_s'] or 0:,.0f} ex/s in the loop | eval AUC {r['eval_auc'] or float('nan'):.4f}", flush=True)  # fmt: skip
        results.append(r)
    ok = True
    for stage in ("prepare_mb", "train_mb"):
        peaks = [r[stage] for r in results if stage in r]
        if not peaks:
            continue
        spread = max(peaks) / min(peaks) - 1.0
        within = max(peaks) <= BOUND_MB and spread <= SPREAD
        ok &= within
        print(f"{stage[:-3]:>7}: peak RSS max {max(peaks):.1f} MB (bound {BOUND_MB:.0f}), largest/smallest = "
              f"{1 + spread:.3f} (bound {1 + SPREAD:.2f}) -> {'OK' if within else 'OVER'}")  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {out / 'results.json'}")
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    raise SystemExit(main())
