"""The accuracy cost of bf16 autocast in training, against run-to-run (seed) noise, on the sweep's data sets.

For each data set of `benchmarks/sweep_data.py` and each seed, trains the same config twice, `[train] bf16 = "off"` and
`"on"`, with the same seed (same initial weights, same batches), in this process on the CPU. Eval metrics are always
computed in fp32 (as the model is served), so the two runs differ only in the precision of the training steps.

Per data set, over the seeds: mean eval AUC in fp32 and in bf16, the mean paired difference (bf16 - fp32) with its
standard error, and the seed-to-seed standard deviation of the fp32 AUC: the noise that a change of seed alone makes.
"cost > noise?" is "yes" when bf16's mean AUC loss (fp32 - bf16) exceeds that standard deviation. Examples/s (the
training loop's own figure) are printed too; on a shared machine they move with the load, the AUCs do not.

    python benchmarks/bf16_cost.py                         # all data sets, seeds 0 1 2 (~14 CPU-minutes; 2 cores)
    python benchmarks/bf16_cost.py --only adult appstore --seeds 0 1 2 3 4
    python benchmarks/bf16_cost.py --json runs/bf16_cost.json
    python benchmarks/bf16_cost.py --smoke                 # tiny data sets, seeds 0 1 (run by the tests)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from _machine import print_machine
from sweep_data import NAMES, DataSet, build

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")
SMOKE_MODEL = {"embedding_dim": 4, "hidden": (32, 16)}  # --smoke checks the plumbing, not the figures: a small model


def train_one(ds: DataSet, seed: int, precision: str, out: Path, model: dict | None = None) -> dict:
    """Train `ds`'s config with this seed and precision (and `model`'s changes to [model], if any); returns its eval
    AUC, logloss and examples/s."""
    from widedeep.config import load
    from widedeep.train.loop import train

    cfg = load(ds.config)
    run_dir = out.resolve() / ds.name / f"seed{seed}-{precision}"
    setting = "on" if precision == "bf16" else "off"
    cfg = replace(cfg, train=replace(cfg.train, seed=seed, bf16=setting, out=str(run_dir), device="cpu"))
    cfg = replace(cfg, model=replace(cfg.model, **model)) if model else cfg
    shutil.rmtree(run_dir, ignore_errors=True)
    model_dir = train(cfg, progress=False, device="cpu")
    metrics = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))["metrics"]
    if metrics["precision"]["train"] != precision:
        raise RuntimeError(f"{ds.name} seed {seed}: asked for {precision} training, the run says {metrics['precision']}")
    shutil.rmtree(run_dir)  # the figures are all we keep: models and checkpoints of every run would fill the disk
    return {
        "dataset": ds.name, "seed": seed, "precision": precision, "auc": metrics["eval"]["auc"],
        "logloss": metrics["eval"]["logloss"], "examples_per_s": metrics["examples_per_s"], "steps": metrics["steps"],
    }  # fmt: skip


def summarize(runs: list[dict]) -> dict:
    """Paired statistics of one data set's runs (one fp32 and one bf16 run per seed)."""
    by = {(r["seed"], r["precision"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    missing = [(s, p) for s in seeds for p in PRECISIONS if (s, p) not in by]
    if missing:
        raise ValueError(f"every seed needs an fp32 and a bf16 run; missing (seed, precision): {missing}")
    fp32 = [by[s, "fp32"]["auc"] for s in seeds]
    bf16 = [by[s, "bf16"]["auc"] for s in seeds]
    diff = [b - f for b, f in zip(bf16, fp32)]
    n = len(seeds)
    mean_diff = statistics.fmean(diff)
    noise = statistics.stdev(fp32) if n > 1 else math.nan
    if n < 2:
        verdict = "n/a (1 seed)"
    elif -mean_diff > noise:
        verdict = "yes"
    else:
        verdict = "no, bf16 higher" if mean_diff > noise else "no"
    means = {
        f"{p}_{key}": statistics.fmean(by[s, p][key] for s in seeds) for p in PRECISIONS for key in ("logloss", "examples_per_s")
    }
    return {
        "seeds": seeds,
        "fp32_auc": statistics.fmean(fp32),
        "bf16_auc": statistics.fmean(bf16),
        "diff_auc": mean_diff,
        "diff_auc_se": statistics.stdev(diff) / math.sqrt(n) if n > 1 else math.nan,
        "fp32_auc_seed_sd": noise,
        "cost_exceeds_noise": verdict,
        **means,  # fp32_logloss, fp32_examples_per_s, bf16_logloss, bf16_examples_per_s
    }


def table(datasets: list[DataSet], summaries: dict[str, dict]) -> str:
    """The Markdown table: one row per data set."""
    lines = [
        "| data set | train / eval rows | seeds | fp32 AUC | bf16 AUC | bf16 - fp32 (± SE) | fp32 seed sd (noise) "
        "| cost > noise? | fp32 logloss | bf16 logloss | fp32 ex/s | bf16 ex/s |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for ds in datasets:
        s = summaries[ds.name]
        lines.append(
            f"| {ds.name} | {ds.train_rows:,} / {ds.eval_rows:,} | {len(s['seeds'])} | {s['fp32_auc']:.4f} "
            f"| {s['bf16_auc']:.4f} | {s['diff_auc']:+.4f} ± {s['diff_auc_se']:.4f} | {s['fp32_auc_seed_sd']:.4f} "
            f"| {s['cost_exceeds_noise']} | {s['fp32_logloss']:.4f} | {s['bf16_logloss']:.4f} "
            f"| {s['fp32_examples_per_s']:,.0f} | {s['bf16_examples_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def run_table(runs: list[dict]) -> str:
    """Every run: the paired AUCs of each seed."""
    by = {(r["dataset"], r["seed"], r["precision"]): r for r in runs}
    lines = ["| data set | seed | fp32 AUC | bf16 AUC | bf16 - fp32 | fp32 ex/s | bf16 ex/s |"]
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for name, seed in dict.fromkeys((r["dataset"], r["seed"]) for r in runs):
        f, b = by[name, seed, "fp32"], by[name, seed, "bf16"]
        lines.append(
            f"| {name} | {seed} | {f['auc']:.4f} | {b['auc']:.4f} | {b['auc'] - f['auc']:+.4f} "
            f"| {f['examples_per_s']:,.0f} | {b['examples_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="train.seed values (default 0 1 2; --smoke: 0 1)")
    ap.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES), help="data sets (default: all)")
    ap.add_argument("--data", type=Path, default=None, help="sweep data folder (default runs/sweep_data[_smoke])")
    ap.add_argument("--out", type=Path, default=None, help="training runs' folder (default runs/bf16_cost[_smoke])")
    ap.add_argument("--json", type=Path, default=None, help="write every run and the summaries to this file")
    ap.add_argument("--smoke", action="store_true", help="a few thousand rows per data set, seeds 0 1: checks the script runs")
    args = ap.parse_args()
    seeds = args.seeds or ([0, 1] if args.smoke else [0, 1, 2])
    suffix = "_smoke" if args.smoke else ""
    data = (args.data or ROOT / "runs" / f"sweep_data{suffix}").resolve()
    out = (args.out or ROOT / "runs" / f"bf16_cost{suffix}").resolve()

    from widedeep.cpu import cpu_has_native_bf16
    from widedeep.train.trainer import BF16_ENV

    if os.environ.pop(BF16_ENV, None) is not None:  # it would override the config and force one path for both runs
        print(f"bf16_cost: {BF16_ENV} is set in the environment; ignored here", file=sys.stderr)
    print_machine()
    native = cpu_has_native_bf16()
    print(f"native bf16 (cpu_has_native_bf16): {'yes' if native else 'no: bf16 is emulated, and slow'}", flush=True)
    load_before, start = os.getloadavg()[0], time.perf_counter()
    datasets = build(data, args.smoke, tuple(args.only))
    runs: list[dict] = []
    for ds in datasets:
        for i, seed in enumerate(seeds):
            for precision in PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]:  # alternate the order: load drifts
                runs.append(train_one(ds, seed, precision, out, SMOKE_MODEL if args.smoke else None))
                r = runs[-1]
                print(f"  {ds.name} seed {seed} {precision}: AUC {r['auc']:.4f} logloss {r['logloss']:.4f} "
                      f"{r['examples_per_s']:,.0f} ex/s", file=sys.stderr, flush=True)  # fmt: skip
    summaries = {ds.name: summarize([r for r in runs if r["dataset"] == ds.name]) for ds in datasets}
    wall = time.perf_counter() - start
    smoke = " (smoke: tiny data and model)" if args.smoke else ""
    print(f"\nbf16 autocast vs fp32 training, eval in fp32, seeds {' '.join(map(str, seeds))}{smoke}:\n")
    print(table(datasets, summaries))
    print("\nbf16 - fp32: mean of the paired differences (same seed), ± its standard error. noise: the standard deviation of "
          "the fp32 AUC across seeds. cost > noise?: mean AUC loss (fp32 - bf16) > noise. ex/s: the training loop's "
          "examples/s, mean over seeds (a shared machine: these move with the load; AUCs do not).\n")  # fmt: skip
    print(run_table(runs))
    print(f"\n{len(runs)} runs in {wall:.0f} s | load {load_before:.2f} -> {os.getloadavg()[0]:.2f}")
    if args.json:
        from widedeep.atomic import write_text_atomic
        from widedeep.metrics import json_safe

        args.json.parent.mkdir(parents=True, exist_ok=True)
        sets = {ds.name: {"config": str(ds.config), "train_rows": ds.train_rows, "eval_rows": ds.eval_rows} for ds in datasets}
        result = {"native_bf16": native, "smoke": args.smoke, "seeds": seeds, "wall_s": wall, "datasets": sets,
                  "summaries": summaries, "runs": runs}  # fmt: skip
        write_text_atomic(args.json, json.dumps(json_safe(result), indent=1) + "\n")


if __name__ == "__main__":
    main()
