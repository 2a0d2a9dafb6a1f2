"""The handlers of the `widedeep` subcommands (widedeep.cli builds the parser): each reads its arguments and calls the
library, importing it only when it runs, so that `widedeep --help` stays fast."""

from __future__ import annotations

import argparse
import json
import os
import sys

from widedeep.config import load


def world() -> int:
    """WORLD_SIZE set by torchrun (1 for a plain process); read here so that a plain run imports no torch to learn it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def prepare(args: argparse.Namespace) -> int:
    if world() > 1:  # under torchrun: every rank fits and encodes its part of the files
        from widedeep.features.distributed import prepare_distributed
        from widedeep.train.distributed import setup, teardown

        setup("cpu")
        prepare_distributed(load(args.config), force=args.force)
        teardown()
        return 0
    from widedeep.features.prepare import prepare

    prepare(load(args.config), force=args.force)
    return 0


def train(args: argparse.Namespace) -> int:
    if args.nproc > 1 and world() == 1:  # re-run this command in N processes under torchrun
        from widedeep.train.distributed import launch_local

        argv = ["train", str(args.config), "--device", args.device]
        argv += [f"--resume={args.resume}"] if args.resume != "no" else []
        argv += ["--warm-start", str(args.warm_start)] if args.warm_start else []
        return launch_local(args.nproc, argv)
    cfg = load(args.config)
    from widedeep.train.distributed import teardown
    from widedeep.train.loop import train

    train(cfg, resume=args.resume, warm_start=args.warm_start, device=args.device)
    teardown()  # leave the torchrun process group, if any
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from widedeep.artifact import Model
    from widedeep.serve.precision import evaluate

    print(json.dumps(evaluate(Model.load(args.model), args.data, args.precision), indent=2))
    return 0


def predict(args: argparse.Namespace) -> int:
    from widedeep.artifact import Model

    Model.load(args.model).predict_file(args.data, args.out)
    print(f"wrote {args.out}")
    return 0


def report(args: argparse.Namespace) -> int:
    from widedeep.report.plots import MissingPlotsExtra, require_matplotlib

    try:
        require_matplotlib()
    except MissingPlotsExtra as e:
        print(f"widedeep report: error: {e}", file=sys.stderr)
        return 2
    from widedeep.metrics import CALIBRATION_BINS
    from widedeep.report.writer import write_report

    bins = CALIBRATION_BINS if args.bins is None else args.bins
    report = write_report(args.model, args.data, args.out, bins=bins)
    print(f"wrote {args.out}: {', '.join([*report['plots'], 'report.md', 'report.json'])}")
    return 0


def compare(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    from widedeep.train.compare import compare

    compare(cfg, device=args.device)
    return 0


def tune(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    from widedeep.tune import MissingTuneExtra, tune

    try:
        result = tune(
            cfg, args.trials, timeout=args.timeout, storage=args.storage, study_name=args.study, jobs=args.jobs,
            progress=not args.worker, outputs=not args.worker, device=args.device,
        )  # fmt: skip
    except MissingTuneExtra as e:
        print(f"widedeep tune: error: {e}", file=sys.stderr)
        return 2
    if not args.worker:
        print(result.summary())
    return 0


def demo(args: argparse.Namespace) -> int:
    from widedeep.demo import demo

    demo(out=args.out, rows=args.rows, device=args.device)
    return 0


def export(args: argparse.Namespace) -> int:
    from widedeep.serve.onnx import export_onnx

    if not args.onnx:
        raise ValueError("choose an export format: --onnx (the only one so far)")
    print(f"wrote {export_onnx(args.model, args.out)}")
    return 0


def join(args: argparse.Namespace) -> int:
    from widedeep.loop.join import join

    stats = join(
        load(args.config),
        args.impressions,
        args.events,
        args.out,
        window=args.window,
        positive=args.positive,
        include_immature=args.include_immature,
        engine=args.engine,
        memory_limit=args.memory_limit,
    )
    print(stats.to_text())
    return 0


def validate(args: argparse.Namespace) -> int:
    from widedeep.serve.validate import validate

    tolerances = {"auc_tolerance": args.auc_tolerance, "logloss_tolerance": args.logloss_tolerance}
    report = validate(args.new, args.against, args.data, **tolerances, precision=args.precision)
    print(report.to_json() if args.json else report.to_text())
    return 0 if report.passed else 1


def promote(args: argparse.Namespace) -> int:
    from widedeep.serve.registry import Registry

    registry = Registry(args.registry, create=True)
    report = registry.promote(
        args.new,
        data=args.data,
        auc_tolerance=args.auc_tolerance,
        logloss_tolerance=args.logloss_tolerance,
        force=args.force,
        name=args.name,
    )
    print(report.to_text())
    if report.passed or args.force:
        print(f"promoted: {args.registry}/CURRENT -> {registry.current_version()}" + ("" if report.passed else " (forced)"))
        return 0
    print(f"not promoted: {args.registry}/CURRENT still -> {registry.current_version() or '(none)'}", file=sys.stderr)
    return 1


def retrain(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    from widedeep.loop.retrain import retrain

    tolerances = {"auc_tolerance": args.auc_tolerance, "logloss_tolerance": args.logloss_tolerance}
    fraction = {} if args.holdout_fraction is None else {"holdout_fraction": args.holdout_fraction}  # else the library's
    result = retrain(cfg, args.registry, args.data, day=args.day, name=args.name, device=args.device, **tolerances, **fraction)
    if result.report is not None:
        print(result.report.to_text())
    print(result.summary(), file=sys.stdout if result.promoted else sys.stderr)
    return 0 if result.promoted else 1


def ab_report(args: argparse.Namespace) -> int:
    from widedeep.loop.abreport import REPORT_MD, ab_report, markdown_table

    report = ab_report(
        args.impressions, args.events, args.out, window=args.window, positive=args.positive, control=args.control,
        include_immature=args.include_immature,
    )  # fmt: skip
    print(markdown_table(report.arms))
    print(f"wrote {args.out / REPORT_MD} (control: {report.control})")
    return 0


def simulate(args: argparse.Namespace) -> int:
    from widedeep.loop.abreport import REPORT_MD, markdown_table
    from widedeep.loop.simulate import Simulation, parse_arms, paper_lifts, simulate

    given = {k: getattr(args, k) for k in ("days", "users", "seed", "offline_rows") if getattr(args, k) is not None}
    sim = Simulation(**given, **({"arms": parse_arms(args.arms)} if args.arms is not None else {}))  # else the library's
    report = simulate(sim, args.out)
    print(markdown_table(report.arms, paper_lifts()))
    print(f"wrote {args.out / 'report' / REPORT_MD}")
    return 0


def serve(args: argparse.Namespace) -> int:
    import logging

    from widedeep.serve.server import serve
    from widedeep.serve.limits import Limits

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_candidates=args.max_candidates,
        max_string_bytes=args.max_string_bytes,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_connections=args.max_connections,
    )
    from widedeep.serve.logs import Rolling

    rolling = Rolling(seconds=args.log_roll_seconds, rows=args.log_roll_rows, mb=args.log_roll_mb, queue=args.log_queue)
    from widedeep.serve.batcher import Batching

    batching = Batching(args.batching == "on", args.max_batch_candidates, args.max_queue_delay_us, args.batch_queue)
    return serve(
        args.model,
        arms=args.arms,
        split_key=args.split_key,
        log_dir=args.log_dir,
        log_sample=args.log_sample,
        rolling=rolling,
        host=args.host,
        port=args.port,
        backend=args.backend,
        sub_batch=args.sub_batch,
        threads=args.threads,
        intra_op=args.intra_op,
        project_mb=args.project_mb,
        precision=args.precision,
        limits=limits,
        poll_s=args.poll,
        log_level=args.log_level,
        batching=batching,
        workers=args.workers,
    )


def bench_serve(args: argparse.Namespace) -> int:
    from widedeep.serve.bench import bench_serve

    context = [c for c in args.context.split(",") if c] if args.context is not None else None
    result = bench_serve(
        args.model,
        candidates=args.candidates,
        requests=args.requests,
        warmup=args.warmup,
        clients=args.clients,
        seconds=args.seconds,
        context_columns=context,
        backend=args.backend,
        precision=args.precision,
        http=not args.no_http,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    print(result.markdown())
    return 0
