"""Training throughput of `widedeep train` at the paper's configuration, against the bare-MLP bound measured in the same run.

Paper config: 26 categorical features with 32-d embeddings + 13 continuous (value and null indicator), MLP 1024-512-256,
batch 1024, FTRL (wide) + AdaGrad (deep), on 1M Criteo-like rows (`widedeep.datasets.criteo_like`). Each training run is
its own process, and its peak RSS is that process's own high-water mark (`VmHWM`): Python, torch, the model, optimizer
state, evaluation, checkpoint and model writing, and the pages of the memory-mapped shards. (Not the `wait4` rusage of the
child: Linux starts a child's `ru_maxrss` at its parent's peak, so data generation in this process would count.) Reported:

- examples/s of the whole loop (gather from the memory map -> forward -> loss -> backward -> FTRL + AdaGrad steps), fp32;
- the bare-MLP bound: forward + backward + AdaGrad step of the same MLP on a ready (1024, 858) input, and the fraction of it
  the loop reaches (the MLP is where the FLOPs are; the loop can not beat it). Also the same MLP when the gradient of its
  input is computed too, as training the embeddings needs (one more GEMM of the first layer's size): the tighter bound.
  Each bound is the median over 5-step blocks of 30 steps run before and 30 after the training run (on a shared machine,
  load drifts; the median of the blocks is steadier than their mean);
- bf16 autocast against fp32 over the same first steps: examples/s and eval AUC at that step;
- the Adult example (`examples/adult.toml`, batch 256): examples/s, test AUC, and the wall time of
  `widedeep train` (prepare included) + `widedeep evaluate` as fresh processes.

bf16 runs only where asked (`bf16 = "on"` in the comparison); every other figure is fp32.

    python benchmarks/train.py              # 1M rows: about 3 minutes of data generation/prepare (cached) + training
    python benchmarks/train.py --smoke      # seconds; checks that the script still runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path

from _machine import cpu_model_and_flags, print_machine

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"embedding_dim": 32, "hidden": (1024, 512, 256), "batch_size": 1024}
SMOKE = {"embedding_dim": 4, "hidden": (32, 16), "batch_size": 256}
TARGET_EX_S = 25_000
TARGET_RSS_MB = 1024.0
TARGET_ADULT_AUC = 0.930
BOUND_BLOCK = 5  # steps per timed block of the MLP bounds


# ----------------------------------------------------------------------------------------------------------------------
# Criteo-like data at the paper configuration


def paper_config(work: Path, rows: int, out: str, bf16: str, eval_every: int, shape: dict = PAPER):  # -> Config
    from widedeep.datasets.criteo_like import criteo_like_config

    cfg = criteo_like_config(work / f"train-{rows}.parquet", work / "eval.parquet", work / out, embed_buckets=False)
    return replace(
        cfg,
        data=replace(cfg.data, prepared=str(work / f"prepared-{rows}")),
        model=replace(cfg.model, embedding_dim=shape["embedding_dim"], hidden=tuple(shape["hidden"])),
        train=replace(cfg.train, batch_size=shape["batch_size"], epochs=1, bf16=bf16, eval_every=eval_every, seed=0),
    )


def make_data(work: Path, rows: int, eval_rows: int) -> dict[str, float]:
    """Generate the Parquet files and prepare them (skipped when already there); returns the seconds spent."""
    from widedeep.datasets.criteo_like import write_criteo_like
    from widedeep.features.prepare import is_fresh, prepare

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_path, eval_path = work / f"train-{rows}.parquet", work / "eval.parquet"
    if not train_path.exists():
        write_criteo_like(train_path, rows, seed=0)
    meta = work / "eval.rows"
    if not eval_path.exists() or not meta.exists() or meta.read_text() != str(eval_rows):
        write_criteo_like(eval_path, eval_rows, seed=1)
        meta.write_text(str(eval_rows))
    t1 = time.perf_counter()
    cfg = paper_config(work, rows, "unused", "off", 0)
    if not is_fresh(cfg):
        prepare(cfg, verbose=False)
    return {"generate_s": t1 - t0, "prepare_s": time.perf_counter() - t1}


def train_once(spec: dict) -> dict:
    """Train one configuration; returns its model.json metrics."""
    from widedeep.train.loop import train

    cfg = paper_config(Path(spec["work"]), spec["rows"], spec["out"], spec["bf16"], spec["eval_every"], spec["shape"])
    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    model_dir = train(cfg, progress=False, max_steps=spec["steps"] or None, device="cpu")
    metrics = json.loads((model_dir / "model.json").read_text())["metrics"]
    return {**metrics, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: `VmHWM` (its own address space since exec) where /proc has it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_child(args: list[str]) -> tuple[dict, float]:
    """Run this script in a child process; returns (its JSON output, wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def mlp_bound(in_dim: int, steps: int, threads: int, shape: dict = PAPER, input_grad: bool = False) -> list[float]:
    """examples/s of forward + backward + AdaGrad step of the bare paper MLP on a ready input (the compute bound), one
    figure per block of `BOUND_BLOCK` steps; `input_grad` also computes the gradient of the input, as the loop does for
    the embeddings."""
    import torch
    import torch.nn.functional as F

    from widedeep.config import TrainConfig
    from widedeep.model.deep import MLP
    from widedeep.optim import make_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    mlp = MLP(in_dim, shape["hidden"])
    opt = make_optimizer(TrainConfig().deep_optimizer, list(mlp.named_parameters()))  # the loop's deep optimizer
    x = torch.randn(shape["batch_size"], in_dim, requires_grad=input_grad)
    y = torch.randint(0, 2, (shape["batch_size"],)).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        x.grad = None
        F.binary_cross_entropy_with_logits(mlp(x).squeeze(-1), y).backward()
        opt.step()

    for _ in range(3):
        step()
    block = min(BOUND_BLOCK, steps)
    speeds = []
    for _ in range(max(steps // block, 1)):
        t0 = time.perf_counter()
        for _ in range(block):
            step()
        speeds.append(block * shape["batch_size"] / (time.perf_counter() - t0))
    return speeds


# ----------------------------------------------------------------------------------------------------------------------
# The Adult example, end to end as a user runs it


def adult_config(work: Path, sample: int) -> tuple[Path, Path]:
    """A copy of examples/adult.toml writing under `work`, its data paths made absolute; returns (config, test data).

    The stratified split is written where the example expects it when missing. `sample` > 0 keeps only that many rows
    of each file (for --smoke)."""
    import pyarrow.parquet as pq

    from widedeep.datasets.adult import adult_split

    src = ROOT / "examples" / "adult.toml"
    text = src.read_text()
    raw = tomllib.loads(text)
    paths = {}
    for p in [*_as_list(raw["data"]["train"]), *_as_list(raw["data"].get("eval", []))]:
        full = (src.parent / p).resolve()
        if not full.exists() and full.name in ("train.parquet", "test.parquet"):
            adult_split(full.parent)
        if sample:
            small = work / "adult-data" / full.name
            small.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pq.read_table(full).slice(0, sample), small)
            full = small
        paths[p] = full
    for p, full in paths.items():
        text = text.replace(f'"{p}"', f'"{full}"').replace(f"'{p}'", f"'{full}'")
    out = raw.get("train", {}).get("out")
    if out is None:
        text = text.replace("[train]", f'[train]\nout = "{work / "adult"}"', 1)
    else:
        text = text.replace(f'"{out}"', f'"{work / "adult"}"', 1)
    if "prepared" in raw["data"]:
        text = text.replace(f'"{raw["data"]["prepared"]}"', f'"{work / "adult" / "prepared"}"', 1)
    cfg_path = work / "adult.toml"
    cfg_path.write_text(text)
    test = paths[_as_list(raw["data"].get("eval", raw["data"]["train"]))[0]]
    return cfg_path, test


def _as_list(v: str | list[str]) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


def adult(work: Path, sample: int, in_process: bool = False) -> dict[str, float]:
    """`widedeep train` (fresh prepare) + `widedeep evaluate` as two processes: wall time, test AUC, examples/s.

    `in_process` calls the same CLI entry point inside this process (no interpreter start; for --smoke)."""
    cfg_path, test = adult_config(work, sample)
    shutil.rmtree(work / "adult", ignore_errors=True)
    train_args = ["train", str(cfg_path), "--device", "cpu"]
    eval_args = ["evaluate", str(work / "adult" / "model"), str(test)]
    t0 = time.perf_counter()
    if in_process:
        import contextlib
        import io

        from widedeep.cli import main as cli

        out = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            codes = [cli(train_args)]
        with contextlib.redirect_stdout(out):
            codes.append(cli(eval_args))
        if codes != [0, 0]:
            raise RuntimeError(f"widedeep train/evaluate exited with {codes}")
        stdout = out.getvalue()
    else:
        cli = [sys.executable, "-m", "widedeep"]
        subprocess.run([*cli, *train_args], check=True, capture_output=True, text=True)
        stdout = subprocess.run([*cli, *eval_args], check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t0
    metrics = json.loads((work / "adult" / "model" / "model.json").read_text())["metrics"]
    return {
        "wall_s": wall,
        "test_auc": json.loads(stdout)["auc"],
        "examples_per_s": metrics["examples_per_s"],
        "batch_size": json.loads((work / "adult" / "model" / "model.json").read_text())["config"]["train"]["batch_size"],
    }


# ----------------------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script runs")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--eval-rows", type=int, default=50_000)
    ap.add_argument("--steps", type=int, default=0, help="fp32 training steps (0 = one full epoch)")
    ap.add_argument("--bf16-steps", type=int, default=20, help="steps of the bf16 and fp32 comparison (bf16 is slow on AVX2)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_train")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (OMP_NUM_THREADS) for every run; 0 = the loop's rule")
    ap.add_argument("--no-adult", action="store_true")
    ap.add_argument("--child", type=str, default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(train_once(json.loads(args.child))))
        return
    if args.smoke:
        args.rows, args.eval_rows, args.steps, args.bf16_steps = 3000, 1000, 0, 3
        args.work = args.work.with_name(args.work.name + "_smoke")

    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the training processes
    import torch

    print_machine()
    work = args.work.resolve()
    setup = make_data(work, args.rows, args.eval_rows)
    shape = SMOKE if args.smoke else PAPER  # --smoke shrinks the model too: it checks the plumbing, not the speed
    spec = {"work": str(work), "rows": args.rows, "eval_every": 0, "shape": shape}
    in_dim = 26 * shape["embedding_dim"] + 26  # 26 embeddings + 13 continuous x (value, null indicator)
    bound_steps = 3 if args.smoke else 30
    threads = torch.get_num_threads()
    before = [mlp_bound(in_dim, bound_steps, threads, shape, g) for g in (False, True)]  # before and after: on a shared
    fp32, fp32_wall = run_child(["--child", json.dumps({**spec, "out": "fp32", "bf16": "off", "steps": args.steps})])
    after = [mlp_bound(in_dim, bound_steps, threads, shape, g) for g in (False, True)]  # machine, load drifts
    bound, bound_input_grad = (statistics.median(a + b) for a, b in zip(before, after))
    # bf16 against fp32 over the same first steps (same seed, same batches), each evaluated at the end.
    short = {}
    for mode in ("off", "on"):
        one = {**spec, "out": f"short-bf16-{mode}", "bf16": mode, "steps": args.bf16_steps}
        short[mode] = train_once(one) if args.smoke else run_child(["--child", json.dumps(one)])[0]
    result = {
        "rows": args.rows,
        "threads": torch.get_num_threads(),
        "cpu_native_bf16": bool({"avx512_bf16", "amx_bf16"} & cpu_model_and_flags()[1]),
        **setup,
        "paper_config": {
            "examples_per_s": fp32["examples_per_s"],
            "steps": fp32["steps"],
            "eval_auc": fp32["eval"]["auc"],
            "peak_rss_mb": fp32["peak_rss_mb"],
            "process_wall_s": fp32_wall,
            "mlp_bound_examples_per_s": bound,
            "fraction_of_bound": fp32["examples_per_s"] / bound,
            "mlp_input_grad_bound_examples_per_s": bound_input_grad,
            "fraction_of_input_grad_bound": fp32["examples_per_s"] / bound_input_grad,
            "target_examples_per_s": TARGET_EX_S,
        },
        "bf16_vs_fp32": {
            "steps": args.bf16_steps,
            "bf16_examples_per_s": short["on"]["examples_per_s"],
            "fp32_examples_per_s": short["off"]["examples_per_s"],
            "bf16_eval_auc": short["on"]["eval"]["auc"],
            "fp32_eval_auc": short["off"]["eval"]["auc"],
        },
    }
    if not args.no_adult and (ROOT / "examples" / "adult.toml").exists():
        result["adult"] = adult(work, sample=1000 if args.smoke else 0, in_process=args.smoke)
    print(json.dumps(result, indent=1))
    p, b = result["paper_config"], result["bf16_vs_fp32"]
    print(
        f"\n{'smoke shape' if args.smoke else 'paper config'}, {args.rows:,} rows, {result['threads']} threads: {p['examples_per_s']:,.0f} ex/s "
        f"= {p['fraction_of_bound']:.0%} of the bare-MLP bound ({bound:,.0f} ex/s), {p['fraction_of_input_grad_bound']:.0%} of the "
        f"MLP-with-input-gradient bound ({bound_input_grad:,.0f} ex/s); target {TARGET_EX_S:,}; "
        f"peak RSS {p['peak_rss_mb']:,.0f} MB (target <= {TARGET_RSS_MB:,.0f})\n"
        f"bf16 autocast: {b['bf16_examples_per_s']:,.0f} ex/s vs fp32 {b['fp32_examples_per_s']:,.0f}, eval AUC {b['bf16_eval_auc']:.4f} vs fp32 {b['fp32_eval_auc']:.4f} "
        f"after {b['steps']} steps"
    )
    if "adult" in result:
        a = result["adult"]
        print(
            f"adult (batch {a['batch_size']}): {a['examples_per_s']:,.0f} ex/s, test AUC {a['test_auc']:.4f} "
            f"(target >= {TARGET_ADULT_AUC}), train + evaluate wall {a['wall_s']:.2f} s"
        )


if __name__ == "__main__":
    main()
