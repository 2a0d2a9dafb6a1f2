"""`widedeep` command line: one subcommand per stage of the pipeline. Each handler only parses and calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from widedeep.config import ConfigError, load


def _prepare(args: argparse.Namespace) -> int:
    from widedeep.features.prepare import prepare

    prepare(load(args.config), force=args.force)
    return 0


def _train(args: argparse.Namespace) -> int:
    from widedeep.train.distributed import env_world, launch_local

    if args.nproc > 1 and env_world() == 1:  # re-run this command in N processes under torchrun
        argv = ["train", str(args.config), "--device", args.device]
        argv += ["--resume"] if args.resume else []
        argv += ["--warm-start", str(args.warm_start)] if args.warm_start else []
        return launch_local(args.nproc, argv)
    from widedeep.train.loop import train

    train(load(args.config), resume=args.resume, warm_start=args.warm_start, device=args.device)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from widedeep.artifact import Model

    print(json.dumps(Model.load(args.model).evaluate(args.data), indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from widedeep.artifact import Model

    Model.load(args.model).predict_file(args.data, args.out)
    print(f"wrote {args.out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from widedeep.train.compare import compare

    compare(load(args.config), device=args.device)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from widedeep.demo import demo

    demo(out=args.out, rows=args.rows, device=args.device)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="widedeep", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="fit vocabularies, quantiles and crosses; encode train/eval into shards")
    s.add_argument("config", type=Path)
    s.add_argument("--force", action="store_true", help="re-fit and re-encode even if the prepared data is fresh")
    s.set_defaults(func=_prepare)

    s = sub.add_parser("train", help="train the model declared in CONFIG (runs prepare first if needed)")
    s.add_argument("config", type=Path)
    s.add_argument("--resume", action="store_true", help="continue from the last checkpoint in train.out")
    s.add_argument("--warm-start", type=Path, default=None, metavar="PREV_MODEL", help="start from a previous model's weights")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (runs torchrun --standalone)")
    s.set_defaults(func=_train)

    s = sub.add_parser("evaluate", help="print AUC, logloss and calibration of MODEL on DATA as JSON")
    s.add_argument("model", type=Path)
    s.add_argument("data", type=str)
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("predict", help="write the predictions of MODEL on DATA to a Parquet file")
    s.add_argument("model", type=Path)
    s.add_argument("data", type=str)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=_predict)

    s = sub.add_parser("compare", help="train wide-only, deep-only and wide & deep on the same data (the paper's Table 1)")
    s.add_argument("config", type=Path)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=_compare)

    s = sub.add_parser("demo", help="generate app-store data, prepare it, compare the three models, keep the wide & deep one")
    s.add_argument("--out", type=Path, default=Path("runs/demo"))
    s.add_argument("--rows", type=int, default=None, help="training rows to generate (default: the demo size)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"widedeep {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
