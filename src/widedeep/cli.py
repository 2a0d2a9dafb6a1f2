"""`widedeep` command line: one subcommand per stage of the pipeline. Each handler only parses and calls the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from widedeep import commands
from widedeep.config import ConfigError
from widedeep.serve.settings import AUC_TOLERANCE, BACKENDS, LOGLOSS_TOLERANCE, POLL_S, PRECISION, PRECISIONS, PROJECT_MB
from widedeep.serve.settings import LOG_QUEUE, LOG_ROLL_MB, LOG_ROLL_ROWS, LOG_ROLL_S, LOG_SAMPLE, SPLIT_KEY
from widedeep.serve.settings import BATCH_QUEUE, BATCHING, MAX_BATCH_CANDIDATES, MAX_QUEUE_DELAY_US, WORKERS

BACKEND_HELP = (
    "torch: the whole network in torch; onnxruntime: the exported model.onnx; hybrid: embeddings in torch, the MLP with "
    "its context half split out in onnxruntime (fastest). Default: hybrid where onnxruntime is installed, else torch"
)
PRECISION_HELP = (
    "auto: the fastest of the precisions this CPU runs natively whose probabilities stay within 2e-3 of fp32 with the top "
    "10 of a calibration batch kept, measured at load; fp32; bf16: the MLP's GEMMs on bf16 weights (torch); int8: int8 "
    "MLP weights in onnxruntime (hybrid backend). Default: %(default)s"
)
SCORE_PRECISION_HELP = (
    "the precision the figures come from: fp32 (default: the module's own forward, as training records its metrics), or "
    "bf16 / int8 as a server scores in them"
)


def _tolerances(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", type=str, required=True, help="holdout file, glob or directory with the label column")
    s.add_argument("--auc-tolerance", type=float, default=AUC_TOLERANCE, help="largest AUC drop vs the current model that passes (default: %(default)s)")
    s.add_argument("--logloss-tolerance", type=float, default=LOGLOSS_TOLERANCE, help="largest logloss rise vs the current model that passes (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="widedeep", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="fit vocabularies, quantiles and crosses; encode train/eval into shards")
    s.add_argument("config", type=Path)
    s.add_argument("--force", action="store_true", help="re-fit and re-encode even if the prepared data is fresh")
    s.set_defaults(func=commands.prepare)

    s = sub.add_parser("train", help="train the model declared in CONFIG (runs prepare first if needed)")
    s.add_argument("config", type=Path)
    s.add_argument(
        "--resume", nargs="?", const="yes", default="no", choices=("yes", "auto"),
        help="continue this run from its last checkpoint in train.out (an error if there is none); "
        "--resume=auto: resume if there is one, else start fresh (for cron)",
    )  # fmt: skip
    s.add_argument("--warm-start", type=Path, default=None, metavar="PREV_MODEL", help="start from a previous model's weights")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (runs torchrun --standalone)")
    s.set_defaults(func=commands.train)

    s = sub.add_parser("evaluate", help="print AUC, logloss and calibration of MODEL on DATA as JSON")
    s.add_argument("model", type=Path)
    s.add_argument("data", type=str)
    s.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32", help=SCORE_PRECISION_HELP)
    s.set_defaults(func=commands.evaluate)

    s = sub.add_parser("predict", help="write the predictions of MODEL on DATA to a Parquet file")
    s.add_argument("model", type=Path)
    s.add_argument("data", type=str)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=commands.predict)

    s = sub.add_parser("report", help="plots (ROC, precision-recall, reliability, scores, learning curves) and report.md")
    s.add_argument("model", type=Path)
    s.add_argument("data", type=str, help="file, glob or directory with the label column")
    s.add_argument("--out", type=Path, required=True, help="folder to write (replaced atomically)")
    s.add_argument("--bins", type=int, default=None, help="equal-width calibration bins over [0, 1] (default: 10)")
    s.set_defaults(func=commands.report)

    s = sub.add_parser("compare", help="train wide-only, deep-only and wide & deep on the same data (the paper's Table 1)")
    s.add_argument("config", type=Path)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=commands.compare)

    s = sub.add_parser("tune", help="search hyper-parameters ([tune]) on eval AUC with Optuna; writes <train.out>/tune/<study>")
    s.add_argument("config", type=Path)
    s.add_argument("--trials", type=int, required=True, help="trials to run now (a study in the storage continues)")
    s.add_argument("--timeout", type=float, default=None, help="start no trial after this many seconds")
    s.add_argument(
        "--storage", default=None,
        help="the study's storage: a journal file path or a database URL (sqlite:///tune.db, postgresql://...) that "
        "workers share; default: <train.out>/tune/journal.log",
    )  # fmt: skip
    s.add_argument("--study", default=None, help="study name (default: the config file's name without .toml)")
    s.add_argument("--jobs", type=int, default=1, help="worker processes on this machine")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument(
        "--worker", action="store_true",
        help="only run trials: no progress, summary or outputs (another tune command on the study writes them)",
    )  # fmt: skip
    s.set_defaults(func=commands.tune)

    s = sub.add_parser("demo", help="generate app-store data, prepare it, compare the three models, keep the wide & deep one")
    s.add_argument("--out", type=Path, default=Path("runs/demo"))
    s.add_argument("--rows", type=int, default=None, help="training rows to generate (default: the demo size)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=commands.demo)

    s = sub.add_parser("serve", help="serve MODEL (a model directory or a registry, hot-reloaded), or A/B --arms, over HTTP: "
                       "/v1/recommend, /v1/score, /v1/events")  # fmt: skip
    s.add_argument("model", type=Path, nargs="?", default=None, metavar="MODEL_OR_REGISTRY", help="omit with --arms")
    s.add_argument(
        "--arms", default=None, metavar="NAME=PATH:WEIGHT,...",
        help="A/B arms instead of MODEL_OR_REGISTRY, e.g. control=models/a:50,treatment=registry:50; PATH is a model "
        "directory, a registry (hot-reloaded) or REG@VERSION (pinned); weights are relative integers",
    )  # fmt: skip
    s.add_argument("--split-key", default=SPLIT_KEY, help="context field whose stable hash picks a request's arm (default: %(default)s)")
    s.add_argument("--log-dir", type=Path, default=None, help="log impressions to DIR/impressions/ and accept POST /v1/events into DIR/events/")
    s.add_argument("--log-sample", type=float, default=LOG_SAMPLE, help="share of ranking requests logged, by request id (default: %(default)s)")
    s.add_argument("--log-roll-seconds", type=float, default=LOG_ROLL_S, help="write a log part file this long after its first row (default: %(default)s)")
    s.add_argument("--log-roll-rows", type=int, default=LOG_ROLL_ROWS, help="... or once it holds this many rows (default: %(default)s)")
    s.add_argument("--log-roll-mb", type=float, default=LOG_ROLL_MB, help="... or this many MB (default: %(default)s)")
    s.add_argument(
        "--log-queue", type=int, default=LOG_QUEUE,
        help="answers (or event posts) waiting to be logged; past it rows are dropped and counted (default: %(default)s)",
    )  # fmt: skip
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--backend", choices=BACKENDS, default=None, help=BACKEND_HELP)
    s.add_argument("--sub-batch", type=int, default=None, help="candidates per forward pass (default: 200 hybrid, else 100)")
    s.add_argument("--threads", type=int, default=None, help="sub-batches scored in parallel (default: 1 hybrid, else 2)")
    s.add_argument("--intra-op", type=int, default=1, help="torch threads inside one forward pass")
    s.add_argument("--project-mb", type=int, default=PROJECT_MB, help="memory for embeddings folded into the first MLP layer (0: off; default: %(default)s)")
    s.add_argument("--precision", choices=PRECISIONS, default=PRECISION, help=PRECISION_HELP)
    s.add_argument("--int8", dest="precision", action="store_const", const="int8", help="same as --precision int8")
    from widedeep.serve.limits import Limits  # the limits' defaults (a light module)

    limits = Limits()
    s.add_argument("--max-candidates", type=int, default=limits.max_candidates, help="larger requests get 422 (default: %(default)s)")
    s.add_argument("--max-body-bytes", type=int, default=limits.max_body_bytes, help="larger bodies get 413 (default: %(default)s)")
    s.add_argument(
        "--max-string-bytes", type=int, default=limits.max_string_bytes,
        help="longer string values (UTF-8 bytes, each list element too) get 422 (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--header-timeout", type=float, default=limits.header_timeout,
        help="seconds for a request's headers to arrive, else 408 and the connection is closed (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--body-timeout", type=float, default=limits.body_timeout,
        help="seconds for a body to arrive after its headers, else 408 (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--keep-alive-timeout", type=float, default=limits.keep_alive_timeout,
        help="seconds an idle keep-alive connection stays open (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--max-connections", type=int, default=limits.max_connections,
        help="open connections; more are answered 503 and closed (default: %(default)s)",
    )  # fmt: skip
    s.add_argument("--poll", type=float, default=POLL_S, help="seconds between checks of a registry's CURRENT (default: %(default)s)")
    s.add_argument(
        "--batching", choices=("on", "off"), default=BATCHING,
        help="score the candidates of concurrent requests in shared passes of the network (default: %(default)s)",
    )  # fmt: skip
    s.add_argument("--max-batch-candidates", type=int, default=MAX_BATCH_CANDIDATES, help="candidates in one shared pass (default: %(default)s)")
    s.add_argument(
        "--max-queue-delay-us", type=int, default=MAX_QUEUE_DELAY_US,
        help="microseconds a pass waits for more requests (default: %(default)s: score what is waiting, never wait)",
    )  # fmt: skip
    s.add_argument("--batch-queue", type=int, default=BATCH_QUEUE, help="requests waiting to be scored; more get 503 (default: %(default)s)")
    s.add_argument(
        "--workers", type=int, default=WORKERS,
        help="server processes forked after loading the models, sharing them (default: %(default)s)",
    )  # fmt: skip
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    s.set_defaults(func=commands.serve)

    s = sub.add_parser("bench-serve", help="ranking latency in process and over HTTP at sub-batch x threads splits (the paper's Table 2)")
    s.add_argument("model", type=Path, metavar="MODEL_OR_REGISTRY")
    s.add_argument("--candidates", type=int, default=200)
    s.add_argument("--requests", type=int, default=300, help="timed requests per split")
    s.add_argument("--warmup", type=int, default=30)
    s.add_argument("--clients", type=int, default=4, help="concurrent clients in the throughput run")
    s.add_argument("--seconds", type=float, default=5.0, help="length of the throughput run")
    s.add_argument("--context", default=None, help="comma-separated input columns sent as the context (default: first half)")
    s.add_argument("--backend", choices=BACKENDS, default=None, help=BACKEND_HELP)
    s.add_argument("--precision", choices=PRECISIONS, default=PRECISION, help=PRECISION_HELP)
    s.add_argument("--int8", dest="precision", action="store_const", const="int8", help="same as --precision int8")
    s.add_argument("--no-http", action="store_true", help="in-process figures only")
    s.set_defaults(func=commands.bench_serve)

    s = sub.add_parser("export", help="export MODEL's network to ONNX (MODEL/model.onnx + onnx.json) for --backend onnxruntime")
    s.add_argument("model", type=Path)
    s.add_argument("--onnx", action="store_true", help="write ONNX (the only format)")
    s.add_argument("--out", type=Path, default=None, help="ONNX file to write (default: MODEL/model.onnx)")
    s.set_defaults(func=commands.export)

    s = sub.add_parser("join", help="label the impression log with the event log: the training data for the next model")
    s.add_argument("--impressions", nargs="+", required=True, help="impression log: Parquet files, globs or folders")
    s.add_argument("--events", nargs="+", required=True, help="event log: Parquet or CSV files, globs or folders")
    s.add_argument("--window", required=True, help="a positive event counts within this long after the impression: 24h, 30m, 2d")
    s.add_argument("--positive", default="install", help="the event type that makes the label 1")
    s.add_argument(
        "--include-immature", action="store_true",
        help="keep impressions younger than the window (measured from the newest logged time); left out by default",
    )  # fmt: skip
    s.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb", help="duckdb: embedded (default); spark: PySpark")
    s.add_argument("--memory-limit", default=None, help="duckdb: memory cap such as 4GB; past it the join spills to disk beside --out")
    s.add_argument("--config", type=Path, required=True, help="the config the model is trained with (features, label)")
    s.add_argument("--out", type=Path, required=True, help="labelled Parquet file to write (atomically)")
    s.set_defaults(func=commands.join)

    s = sub.add_parser("validate", help="dry-run NEW on a holdout and compare it with CURRENT; exit 1 if it fails")
    s.add_argument("new", type=Path)
    s.add_argument("--against", type=Path, default=None, metavar="CURRENT", help="the model now served (omit: dry run only)")
    _tolerances(s)
    s.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32", help=SCORE_PRECISION_HELP + " (both models)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=commands.validate)

    s = sub.add_parser("promote", help="validate NEW against the registry's current model, then switch CURRENT atomically")
    s.add_argument("new", type=str, help="a model directory, or a version already in the registry")
    s.add_argument("--registry", type=Path, required=True, help="registry root (created if missing)")
    _tolerances(s)
    s.add_argument("--name", default=None, help="version name (default: UTC timestamp + weights sha prefix)")
    s.add_argument("--force", action="store_true", help="switch CURRENT even if validation fails (the report is still logged)")
    s.set_defaults(func=commands.promote)

    s = sub.add_parser("retrain", help="the daily run: add a day's data, train on the window of days warm-started from the "
                       "registry's current model, validate on the day's holdout, promote; exit 1 if refused")  # fmt: skip
    s.add_argument("config", type=Path)
    s.add_argument("--registry", type=Path, required=True, help="registry root (created if missing)")
    s.add_argument("--data", nargs="+", required=True, metavar="NEW_FILE", help="all of the new day's files, globs or directories")
    s.add_argument("--day", default=None, metavar="YYYY-MM-DD", help="the day the data belong to (default: today, UTC)")
    s.add_argument("--holdout-fraction", type=float, default=None, help="share of the day's rows held out (default: 0.1)")
    s.add_argument("--name", default=None, help="version name (default: UTC timestamp + weights sha prefix)")
    s.add_argument("--auc-tolerance", type=float, default=AUC_TOLERANCE, help="largest AUC drop vs CURRENT that passes (default: %(default)s)")
    s.add_argument("--logloss-tolerance", type=float, default=LOGLOSS_TOLERANCE, help="largest logloss rise that passes (default: %(default)s)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.set_defaults(func=commands.retrain)

    s = sub.add_parser("ab-report", help="the online A/B result: each arm's positive rate and lift over the control, with "
                       "95%% intervals, from the impression and event logs; writes ab_report.md, .json and .png")  # fmt: skip
    s.add_argument("--impressions", nargs="+", required=True, help="impression log: Parquet files, globs or folders")
    s.add_argument("--events", nargs="+", required=True, help="event log: Parquet or CSV files, globs or folders")
    s.add_argument("--window", required=True, help="a positive event counts within this long after the impression: 24h, 30m, 2d")
    s.add_argument("--positive", default="install", help="the event type that counts as a positive (default: %(default)s)")
    s.add_argument("--control", default=None, help="the control arm (default: the arm named control, or the only arm)")
    s.add_argument(
        "--include-immature", action="store_true",
        help="count impressions younger than the window (measured from the newest logged time); left out by default",
    )  # fmt: skip
    s.add_argument("--out", type=Path, required=True, help="folder to write (replaced atomically)")
    s.set_defaults(func=commands.ab_report)

    s = sub.add_parser("simulate", help="the online A/B experiment on the app-store simulator: one server with an arm per "
                       "model type, simulated users, and nightly join, retrain, validate and promote per arm")  # fmt: skip
    s.add_argument("--days", type=int, default=None, help="simulated days after day 0's offline training (default: 3)")
    s.add_argument("--users", type=int, default=None, help="requests per day (default: 2000)")
    s.add_argument("--arms", default=None, help="model types, one arm each; wide is the control (default: wide,deep,wide_deep)")
    s.add_argument("--seed", type=int, default=None, help="the simulated world and its users (default: 0)")
    s.add_argument("--offline-rows", type=int, default=None, help="day 0's offline training log (default: 200000)")
    s.add_argument("--out", type=Path, required=True, help="a new or empty folder; the report goes to OUT/report")
    s.set_defaults(func=commands.simulate)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command (`argv` None reads sys.argv); returns the exit status. Configuration and data errors print one line."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"widedeep {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
