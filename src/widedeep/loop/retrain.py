"""`widedeep retrain`: the daily run of the loop, one command fit for cron. It adds a day's data, trains on a sliding
window of days warm-started from the model now served, validates on the day's holdout and promotes if that passes.

    widedeep retrain CONFIG --registry REG --data NEW_FILE... [--day YYYY-MM-DD] [--holdout-fraction 0.1]
                     [--name VERSION] [--auc-tolerance 0.002] [--logloss-tolerance 0.01] [--device auto]

For day D (``--day``, default today in UTC):

1. Data. ``--data`` names all of D's files (files, globs or directories; Parquet or CSV). They are kept in
   ``<history>/<D>/`` (``[retrain] history``, relative to CONFIG; default ``history``); a re-run with other files
   replaces the day's data. The run trains on every day of the window D - window_days + 1 .. D found in the history
   (``[retrain] window_days``, default 7). D's rows are split into a holdout (``--holdout-fraction``) and the rest,
   which is trained on: by a stable hash of ``request_id`` when the data has that column (a request's rows stay
   together), else by row number (an even spread of exactly floor(rows x fraction) rows). CONFIG's ``[data] train``
   and ``test`` are replaced by the window and the holdout; its ``[data] eval``, when set, still chooses epochs.
   Vocabularies and quantiles are fitted again on the window.
2. Warm start from the registry's current model; with an empty registry, from scratch.
3. Training, with ``resume="auto"``: a run killed midway resumes from its last checkpoint.
4. Validation on the holdout against the current model and promotion (`Registry.promote`); exit status 1, with the
   report printed and CURRENT unchanged, when the new model does not pass.

Everything of day D lives in ``<train.out>/days/<D>/``: ``config.toml`` (the run's own config, with the concrete files),
``holdout.parquet`` and ``day-train.parquet`` (D's two parts), ``retrain.json`` (the inputs and the warm-start version
the run was planned with), ``metrics.jsonl`` and ``model/``. The encoded data and checkpoints are removed once the model
is written. Older day folders and history days are never pruned.

Re-running a day is safe: the same inputs give the same plan, warm start included, so a run killed at any point resumes or
redoes the day; a day whose model the registry already holds (same weights sha256) is reported as promoted, exit 0.
Two runs of one day at a time are refused. Exit status: 0 promoted or already promoted, 1 refused, 2 bad input.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from widedeep.artifact import FEATURES_FILE, ArtifactError, weights_sha256
from widedeep.atomic import publish_dir, publish_file, remove_stale, sha256_file, write_text_atomic
from widedeep.config import Config, RetrainConfig, load, to_dict
from widedeep.demo import dumps_toml
from widedeep.features.hashing import hash_strings
from widedeep.features.io import iter_batches, resolve_paths
from widedeep.features.transform import FeatureSet
from widedeep.serve.registry import Registry
from widedeep.serve.settings import AUC_TOLERANCE, LOGLOSS_TOLERANCE
from widedeep.serve.validate import ValidationReport

HOLDOUT_FRACTION = 0.1
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
SPLIT_KEY = "request_id"  # rows sharing it (one request's candidates) fall on the same side of the split
DAYS = "days"  # <train.out>/days/<D>/: the run folders
CONFIG_FILE = "config.toml"
PLAN_FILE = "retrain.json"
HOLDOUT_FILE = "holdout.parquet"
DAY_TRAIN_FILE = "day-train.parquet"


class RetrainError(ValueError):
    """The daily run cannot go ahead (bad day, data or fraction, or another run of the day); the message says which."""


@dataclass(frozen=True)
class RetrainResult:
    """The outcome of one day's run."""

    day: str
    run_dir: Path
    model_dir: Path
    warm_start: str | None  # the registry version training started from; None: from scratch
    version: str | None  # the registry version holding this day's model; None when refused
    already_promoted: bool  # the model was in the registry before this run (nothing validated)
    report: ValidationReport | None  # None when already promoted
    current: str | None  # what CURRENT points to after the run

    @property
    def promoted(self) -> bool:
        return self.version is not None

    def summary(self) -> str:
        if self.already_promoted:
            return f"day {self.day}: already promoted as version {self.version} (CURRENT -> {self.current}); nothing to do"
        if self.promoted:
            start = f"warm-started from {self.warm_start}" if self.warm_start else "trained from scratch"
            return f"day {self.day}: promoted version {self.version} ({start}); CURRENT -> {self.current}"
        return f"day {self.day}: not promoted; CURRENT still -> {self.current or '(none)'} (model kept in {self.model_dir})"


def retrain(
    cfg: Config,
    registry: Path | str,
    new_data: Sequence[str | Path],
    *,
    day: str | dt.date | None = None,
    holdout_fraction: float = HOLDOUT_FRACTION,
    name: str | None = None,
    auc_tolerance: float = AUC_TOLERANCE,
    logloss_tolerance: float = LOGLOSS_TOLERANCE,
    device: str = "auto",
    progress: bool = True,
) -> RetrainResult:
    """Run day `day` (default: today, UTC) with the new files `new_data`: store, split, warm start, train, validate, promote."""
    from widedeep.train.loop import train

    day = parse_day(day)
    if not 0.0 < holdout_fraction < 1.0:
        raise RetrainError(f"--holdout-fraction must lie strictly between 0 and 1, got {holdout_fraction}")
    say = (lambda msg: print(f"widedeep retrain: {msg}", file=sys.stderr)) if progress else (lambda msg: None)
    settings = cfg.retrain or RetrainConfig()
    history = cfg.resolve(settings.history)
    reg = Registry(registry, create=True)
    run_dir = cfg.out_dir / DAYS / day.isoformat()
    with _day_lock(run_dir):
        # The data: the day's files in the history, the window, the day's two parts and the run's own config.
        store_day(new_data, history, day)
        window = window_files(history, day, settings.window_days)
        plan = _plan(cfg, run_dir, window, holdout_fraction, reg, say)
        run_cfg = load(run_dir / CONFIG_FILE)
        model_dir = run_cfg.out_dir / "model"

        # Training (skipped when the planned run already wrote its model), warm-started from the planned version.
        sha = _model_sha(model_dir)
        if sha is None:
            warm = reg.path(plan["warm_start"]) if plan["warm_start"] else None
            start = f"warm start from version {plan['warm_start']}" if warm else "from scratch"
            say(f"day {day}: training on the days {', '.join(d for d, _ in window)}, {start}")
            train(run_cfg, resume="auto", warm_start=warm, device=device, progress=progress)
            sha = _model_sha(model_dir)
            if sha is None:
                raise RetrainError(f"{model_dir}: training ended without a readable model")
            for folder in (run_cfg.prepared_dir, run_cfg.out_dir / "checkpoints"):  # needed only until the model exists
                shutil.rmtree(folder, ignore_errors=True)

        # Validation and promotion, unless the registry already holds these weights.
        done = RetrainResult(day.isoformat(), run_dir, model_dir, plan["warm_start"], None, False, None, None)
        found = reg.find_weights(sha)
        if found is not None:
            return replace(done, version=found, already_promoted=True, current=reg.current_version())
        tolerances = {"auc_tolerance": auc_tolerance, "logloss_tolerance": logloss_tolerance}
        report = reg.promote(model_dir, data=run_dir / HOLDOUT_FILE, name=name, **tolerances)
        version = reg.find_weights(sha) if report.passed else None
        return replace(done, version=version, report=report, current=reg.current_version())


# ----------------------------------------------------------------------------------------------------------------------
# The day's data, the window and the split


def parse_day(day: str | dt.date | None) -> dt.date:
    """A calendar day from YYYY-MM-DD (None: today in UTC)."""
    if day is None:
        return dt.datetime.now(dt.timezone.utc).date()
    if isinstance(day, dt.date):
        return day
    found = _iso_day(day)
    if found is None:
        raise RetrainError(f"--day must be a date YYYY-MM-DD, got {day!r}")
    return found


def _iso_day(text: str) -> dt.date | None:
    if not _DAY.fullmatch(text):
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def store_day(new_data: Sequence[str | Path], history: Path, day: dt.date) -> Path:
    """Keep the day's files as ``<history>/<day>/`` (published whole); files equal to those already there are not copied
    again, so the day's data keeps its identity (and its prepared data and checkpoints stay valid) across re-runs."""
    if not new_data:
        raise RetrainError("--data: name the new day's files")
    paths = resolve_paths([str(p) for p in new_data], Path.cwd(), "--data")
    by_name: dict[str, Path] = {}
    for p in paths:
        if p.name in by_name:
            raise RetrainError(f"--data: two files named {p.name!r} ({by_name[p.name]} and {p}); a day's files need own names")
        by_name[p.name] = p
    target = history / day.isoformat()
    if _same_files(by_name, target):
        return target
    remove_stale(history)  # what a run killed while copying left behind
    with publish_dir(target) as tmp:  # the sources are read before the old folder goes, even when they lie in it
        for file_name, src in by_name.items():
            shutil.copyfile(src, tmp / file_name)
    return target


def _same_files(files: dict[str, Path], folder: Path) -> bool:
    if not folder.is_dir() or {p.name for p in folder.iterdir() if not p.name.startswith(".")} != set(files):
        return False
    for file_name, src in files.items():
        kept = folder / file_name
        if src.resolve() == kept.resolve():
            continue
        if src.stat().st_size != kept.stat().st_size or sha256_file(src) != sha256_file(kept):
            return False
    return True


def window_files(history: Path, day: dt.date, window_days: int) -> list[tuple[str, list[Path]]]:
    """(day, files) of every history day in day - window_days + 1 .. day, oldest first."""
    first = day - dt.timedelta(days=window_days - 1)
    out = []
    for entry in sorted(history.iterdir()):
        d = _iso_day(entry.name) if entry.is_dir() else None
        if d is not None and first <= d <= day:
            out.append((entry.name, resolve_paths(str(entry), history, f"{history}: day {entry.name}")))
    return out


def holdout_mask(table: pa.Table, start: int, fraction: float) -> np.ndarray:
    """True for the rows held out: a stable hash of `SPLIT_KEY` below `fraction` when the table has that column (a null
    hashes like ""), else an even spread by row number, `start` being the index of the table's first row in the day."""
    if SPLIT_KEY in table.column_names:
        h = hash_strings(pc.cast(table.column(SPLIT_KEY), pa.string()))
        return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction  # the top 53 bits, uniform in [0, 1)
    i = np.arange(start, start + table.num_rows, dtype=np.float64)
    return np.floor((i + 1) * fraction) > np.floor(i * fraction)


def split_day(files: Sequence[Path], read_types: dict[str, pa.DataType], out: Path, fraction: float) -> dict[str, int]:
    """Write the day's rows, every column, to `out`/holdout.parquet and `out`/day-train.parquet; returns the row counts."""
    rows = {"holdout": 0, "train": 0}
    schema, first = None, None
    with ExitStack() as stack:
        holdout_tmp = stack.enter_context(publish_file(out / HOLDOUT_FILE))
        train_tmp = stack.enter_context(publish_file(out / DAY_TRAIN_FILE))
        writers: dict[str, pq.ParquetWriter] = {}
        for path in files:
            for batch in iter_batches([path], types=read_types):
                table = pa.Table.from_batches([batch])
                if schema is None:
                    schema, first = table.schema, path
                    writers = {"holdout": pq.ParquetWriter(holdout_tmp, schema), "train": pq.ParquetWriter(train_tmp, schema)}
                    for w in writers.values():
                        stack.callback(w.close)
                try:
                    table = table.select(schema.names).cast(schema)
                except (KeyError, pa.ArrowException) as e:
                    raise RetrainError(f"{path}: its columns differ from those of {first}: {e}") from None
                held = holdout_mask(table, rows["holdout"] + rows["train"], fraction)
                for part, keep in (("holdout", held), ("train", ~held)):
                    writers[part].write_table(table.filter(pa.array(keep)))
                    rows[part] += int(keep.sum())
        if not rows["holdout"] or not rows["train"]:
            n = rows["holdout"] + rows["train"]
            raise RetrainError(
                f"the new day's {n} rows split into {rows['holdout']} held out and {rows['train']} to train on "
                f"(--holdout-fraction {fraction}); both parts need rows"
            )
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# The plan of a day's run


def _plan(
    cfg: Config, run_dir: Path, window: list[tuple[str, list[Path]]], fraction: float, reg: Registry, say: Any
) -> dict[str, Any]:
    """The inputs of the day's run and the version it warm-starts from. An unchanged plan (same config, window files
    and fraction, its warm-start version still in the registry) is kept, so a re-run continues the same run; a new one
    drops the stale model and writes the day's parts and the run's config afresh."""
    stats = {d: [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files] for d, files in window}
    key = {"config": to_dict(cfg), "window": stats, "holdout_fraction": fraction}
    try:
        old = json.loads((run_dir / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if (
        isinstance(old, dict) and old.get("key") == key
        and (old.get("warm_start") is None or old["warm_start"] in reg.versions())
        and all((run_dir / f).is_file() for f in (CONFIG_FILE, HOLDOUT_FILE, DAY_TRAIN_FILE))
    ):  # fmt: skip
        say(f"day {run_dir.name}: continuing the run planned in {run_dir / PLAN_FILE}")
        return old

    shutil.rmtree(run_dir / "model", ignore_errors=True)  # made from other inputs
    (run_dir / PLAN_FILE).unlink(missing_ok=True)
    remove_stale(run_dir)
    day_files = window[-1][1]
    rows = split_day(day_files, FeatureSet.from_config(cfg).read_types(), run_dir, fraction)
    say(f"day {run_dir.name}: {rows['holdout']} rows held out, {rows['train']} trained on; {len(window)} days in the window")
    raw = to_dict(cfg)
    raw.pop("retrain", None)
    others = [str(p) for _, files in window[:-1] for p in files]
    raw["data"]["train"] = [*others, str(run_dir / DAY_TRAIN_FILE)]
    raw["data"]["eval"] = [str(cfg.resolve(p)) for p in cfg.data.eval]
    raw["data"]["test"] = [str(run_dir / HOLDOUT_FILE)]
    raw["data"]["prepared"] = str(run_dir / "prepared")
    raw["train"]["out"] = str(run_dir)
    current = reg.current_version()
    if current is not None:  # keep the served model's bucket embeddings: "auto" decided on new days could change its layout
        kept = FeatureSet.load(reg.path(current) / FEATURES_FILE).bucket_embedded
        for name, feature in raw["features"].items():
            if feature.get("type") == "continuous" and feature.get("embed_buckets", "auto") == "auto":
                feature["embed_buckets"] = name in kept
    write_text_atomic(run_dir / CONFIG_FILE, dumps_toml(raw))
    plan = {"key": key, "warm_start": current, "rows": rows}
    write_text_atomic(run_dir / PLAN_FILE, json.dumps(plan, indent=1) + "\n")
    return plan


@contextmanager
def _day_lock(run_dir: Path) -> Iterator[None]:
    """Hold the day's lock (released by the kernel if the process dies); a second run of the same day is refused."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrainError(f"{run_dir}: another retrain of day {run_dir.name} is running") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------------------------------
# Models and versions


def _model_sha(model_dir: Path) -> str | None:
    """The weights' sha256 of a complete, verified model directory; None when there is none (or it fails to verify)."""
    try:
        return weights_sha256(model_dir) if model_dir.is_dir() else None
    except ArtifactError:
        return None
