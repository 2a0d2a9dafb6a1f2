"""End-to-end wall time of `widedeep train examples/adult.toml` (prepare + train + evaluate, interpreter start and exit
included), and the test AUC of each seed.

Writes the stratified 80/20 split and a copy of examples/adult.toml (only `seed` changed) into a temporary folder, then
runs `python -m widedeep train CONFIG` in a fresh process per repeat, with no prepared data, so every timed run
prepares, trains 3 epochs and evaluates. `python -c "import torch"`, timed in the same run, is the floor of any command
that trains: the ratio says how far the run is above starting and stopping an interpreter with torch loaded.

    python benchmarks/adult.py                      # seed 0, 5 repeats: min and median wall, test AUC
    python benchmarks/adult.py --seeds 0 1 2        # the AUC of every seed (each timed too)
    python benchmarks/adult.py --smoke              # 2,000 / 500 rows, one run (run by the tests; checks that it runs)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import print_machine

ROOT = Path(__file__).resolve().parents[1]
AUC_TARGET = 0.930


def write_data(data: Path, smoke: bool) -> None:
    """The stratified 80/20 split of the shipped data (`python -m widedeep.datasets adult`); smoke: its first rows."""
    from widedeep.datasets.adult import adult_split

    train, test = adult_split(data)
    if smoke:
        import pyarrow.parquet as pq

        for path, rows in ((train, 2_000), (test, 500)):
            pq.write_table(pq.read_table(path).slice(0, rows), path)


def write_config(examples: Path, seed: int) -> Path:
    """examples/adult.toml with `seed = <seed>` in [train]; its relative paths then point into the temporary folder."""
    text = (ROOT / "examples" / "adult.toml").read_text(encoding="utf-8")
    text, n = re.subn(r"(?m)^seed = \d+", f"seed = {seed}", text)
    if n != 1:
        raise SystemExit("examples/adult.toml: expected exactly one 'seed = N' line in [train]")
    path = examples / f"adult-seed{seed}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return seconds, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed values (default: 0)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per seed (default 5)")
    ap.add_argument("--smoke", action="store_true", help="2,000 train / 500 test rows, one run: checks the script runs")
    args = ap.parse_args()
    repeats = 1 if args.smoke else args.repeats
    print_machine()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "examples").mkdir()
        write_data(root / "data" / "adult", args.smoke)
        floor = min(timed([sys.executable, "-c", "import torch"])[0] for _ in range(repeats))
        walls: list[float] = []
        aucs: dict[int, float] = {}
        for seed in args.seeds:
            config = write_config(root / "examples", seed)
            for _ in range(repeats):
                shutil.rmtree(root / "runs", ignore_errors=True)  # no prepared data: every run prepares
                seconds, _ = timed([sys.executable, "-m", "widedeep", "train", str(config)])
                walls.append(seconds)
                model = json.loads((root / "runs" / "adult" / "model" / "model.json").read_text())
                aucs[seed] = model["metrics"]["eval"]["auc"]
    best, median = min(walls), statistics.median(walls)
    print(
        f"adult ({'smoke, ' if args.smoke else ''}{len(walls)} runs, seeds {' '.join(map(str, args.seeds))}): "
        f"wall min {best:.2f} s, median {median:.2f} s | "
        f"import torch {floor:.2f} s ({best / floor:.1f}x) | test AUC "
        + " / ".join(f"{aucs[s]:.4f}" for s in args.seeds)
        + ("" if args.smoke else f" ({'all' if min(aucs.values()) >= AUC_TARGET else 'NOT all'} >= {AUC_TARGET})")
        + f" | load {load_before:.2f} -> {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
