"""Reliability suite: real `widedeep` processes and a real server on 127.0.0.1, attacked five ways; exit 1 if a target is missed.

1. kill -9 at seeded random points of `widedeep prepare`, `widedeep train` (a checkpoint every 5 steps) and the model
   write, then `widedeep train` (`--resume=auto` after a kill during training): nothing corrupt left at any time, no
   temporary name left after the next run, and the same eval AUC and weights as an uninterrupted run (else: lost);
2. tampered model directories (truncated, modified, deleted, unlisted and linked files, edited model.json, NaN weights
   and a pickle under a recomputed checksum): `Model.load` refuses each, naming the file, and runs no stored code;
3. bad data and configs through `widedeep train`: exit non-zero with one error line naming the file/column/key, no model;
4. an HTTP barrage (malformed JSON, wrong types, booleans, NaN, huge strings, oversized bodies sent in full, slow and
   vanishing clients, wrong content types) against `widedeep serve MODEL`, with /healthz probed every 50 ms;
5. hot swap: 4 clients on `widedeep serve REGISTRY` while `widedeep promote` switches versions.

Targets: 0 lost, 0 corrupt, 0 failed, 0 5xx, no /healthz gap over 1 s. Every loop is bounded and every process and
server is stopped by the suite. Data: app-store impressions (`widedeep.datasets.app_store`) in --out.

    python benchmarks/reliability.py            # the default size: a few minutes
    python benchmarks/reliability.py --smoke    # tiny: 2 kills, 8 bad inputs, each fuzz case once, one promotion
    python benchmarks/reliability.py --areas kills tamper   # some areas only
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _machine import print_machine

from reliability import bad_data, hot_swap, http_fuzz, kills, tamper
from reliability.common import STALL_LIMIT_S, Area, Row, make_data

ROOT = Path(__file__).resolve().parents[1]
AREAS = ("kills", "tamper", "bad-data", "http", "hot-swap")


@dataclass(frozen=True)
class Size:
    train_rows: int
    eval_rows: int
    kills: dict[str, int]  # phase -> kills (kills.PHASES)
    fuzz_per_kind: int  # shots per kind of bad request (each case at least once)
    raw: int  # oversized bodies, and as many disconnects
    slow: int  # slow clients
    promotions: int


SMOKE = Size(4_000, 1_000, {"train": 1, "replace": 1}, 0, 3, 2, 1)
DEFAULT = Size(20_000, 2_000, {"prepare": 3, "train": 4, "write": 3, "replace": 3}, 30, 12, 8, 4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (well under two minutes)")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: runs/reliability/smoke or .../default)")
    p.add_argument("--areas", nargs="+", choices=AREAS, default=list(AREAS))
    p.add_argument("--seed", type=int, default=0, help="seeds the kill points and the fuzz requests")
    p.add_argument("--jobs", type=int, default=3, help="kill trials and bad-data runs at a time")
    p.add_argument("--threads", type=int, default=4, help="fuzz clients at a time")
    p.add_argument("--slow-timeout", type=float, default=2.0, help="the server's --header-timeout and --body-timeout in area 4")
    args = p.parse_args(argv)
    size = SMOKE if args.smoke else DEFAULT
    out = (args.out or ROOT / "runs" / "reliability" / ("smoke" if args.smoke else "default")).resolve()
    print_machine()
    t0 = time.monotonic()
    train, eval = make_data(out / "data", size.train_rows, size.eval_rows)
    print(f"reliability ({'smoke' if args.smoke else 'default'} size, seed {args.seed}): {size.train_rows:,} train + "
          f"{size.eval_rows:,} eval app-store rows in {out}", flush=True)  # fmt: skip

    # The reference run (uninterrupted training) gives the model the other areas use, so it always runs.
    area, ref = kills.run_area(out / "kills", train, eval, 2, size.kills if "kills" in args.areas else {}, args.seed, args.jobs)
    results = [area] if "kills" in args.areas else []
    model = ref.folder / "run" / "model"
    steps = {
        "tamper": lambda: tamper.run_area(model, out / "tamper"),
        "bad-data": lambda: bad_data.run_area(out / "bad-data", sorted(train.glob("*.parquet"))[0], eval, args.jobs, args.smoke),
        "http": lambda: http_fuzz.run_area(
            model, eval, out / "http", per_kind=size.fuzz_per_kind, raw=size.raw, slow=size.slow, threads=args.threads,
            slow_timeout=args.slow_timeout, seed=args.seed,
        ),
        "hot-swap": lambda: hot_swap.run_area(model, eval, out / "hot-swap", promotions=size.promotions, seed=args.seed),
    }  # fmt: skip
    if results:
        print("\n" + results[0].render(), flush=True)
    for number, name in enumerate(AREAS[1:], start=2):
        if name in args.areas:
            results.append(_guarded(f"area {number}: {name}", steps[name]))
            print("\n" + results[-1].render(), flush=True)

    missed = [f"{a.title.split(':')[0]} ({', '.join(r.check for r in a.missed())})" for a in results if a.missed()]
    took = time.monotonic() - t0
    if missed:
        print(f"\nreliability: targets MISSED in {took:.0f} s: {'; '.join(missed)}")
        return 1
    targets = f"0 failed, 0 lost, 0 corrupt, 0 5xx, no stall over {STALL_LIMIT_S:.0f} s"
    print(f"\nreliability: every target met in {took:.0f} s ({targets})")
    return 0


def _guarded(title: str, step: Callable[[], Area]) -> Area:
    """Run one area; one that cannot run at all (say, a server that does not start) is a failed row, not a crash."""
    t0 = time.monotonic()
    try:
        return step()
    except Exception as e:  # noqa: BLE001 -- reported, and the other areas still run
        lines = [line for line in str(e).splitlines() if line.strip()]
        row = Row("the area ran", tried=1, failed=1, notes=[f"{type(e).__name__}: {lines[0] if lines else ''}", *lines[1:][-3:]])
        return Area(title, [row], time.monotonic() - t0)


if __name__ == "__main__":
    sys.exit(main())
