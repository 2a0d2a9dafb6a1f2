"""Write a dataset to disk: `python -m widedeep.datasets adult OUT_DIR` or `python -m widedeep.datasets app_store OUT_DIR`."""

from __future__ import annotations

import argparse

from widedeep.datasets.adult import adult_split
from widedeep.datasets.app_store import DEMO_ROWS, write_app_store


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m widedeep.datasets", description=__doc__)
    sub = p.add_subparsers(dest="dataset", required=True)
    s = sub.add_parser("adult", help="the stratified 80/20 split of UCI Adult: OUT_DIR/train.parquet, OUT_DIR/test.parquet")
    s.add_argument("out_dir")
    s.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("app_store", help="simulated impressions: OUT_DIR/train/part-*.parquet, OUT_DIR/eval.parquet")
    s.add_argument("out_dir")
    s.add_argument("--train", type=int, default=DEMO_ROWS[0], help=f"training rows (default {DEMO_ROWS[0]:,})")
    s.add_argument("--eval", type=int, default=DEMO_ROWS[1], help=f"eval rows (default {DEMO_ROWS[1]:,})")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--rows-per-file", type=int, default=1_000_000)
    args = p.parse_args(argv)
    if args.dataset == "adult":
        paths = adult_split(args.out_dir, seed=args.seed)
    else:
        train, test = write_app_store(args.out_dir, args.train, args.eval, seed=args.seed, rows_per_file=args.rows_per_file)
        paths = (*train, test)
    print("wrote " + ", ".join(str(x) for x in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
