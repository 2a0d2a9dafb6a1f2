"""The study: its storage, the objective of one trial, and the processes that run trials."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from widedeep.config import Config, TuneParam
from widedeep.tune import space

if TYPE_CHECKING:
    import optuna

JOURNAL = "journal.log"  # the default storage, <train.out>/tune/journal.log (it holds any number of studies)
TRIALS = "trials"  # <train.out>/tune/<study>/trials/<number>: each trial's train.out
LOCK = ".lock"  # <train.out>/tune/.lock serializes prepare and the outputs among the processes that share it
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a study's name is its folder's
PRUNER_STARTUP_TRIALS = 2  # trials that finish before any is pruned
HEARTBEAT_S, GRACE_S = 60, 180  # database storages: a trial silent this long is failed (its worker died)
POLL_S = 1.0  # --jobs: how often the launching process looks at the study


class MissingTuneExtra(ImportError):
    """optuna is not installed; the message says how to install the `tune` extra."""


@dataclass(frozen=True)
class TuneResult:
    study: str
    storage: str
    folder: Path  # the study's outputs
    counts: dict[str, int]  # trials of the study by state (complete, pruned, fail, running)
    best: dict[str, Any] | None  # number, eval_auc, test_auc of the best trial
    notes: tuple[str, ...] = ()  # outputs that could not be written, and why

    def summary(self) -> str:
        states = ", ".join(f"{n} {s}" for s, n in self.counts.items() if n)
        line = f"widedeep tune: study {self.study!r}: {states or 'no trials'}"
        if self.best is not None:
            test = self.best.get("test_auc")
            line += f"; best trial {self.best['number']}: eval AUC {self.best['eval_auc']:.4f}"
            line += f" (test AUC {test:.4f}, not used for choosing)" if test is not None else ""
            line += f" -> {self.folder / 'best.toml'}"
        return "\n".join([line, *self.notes])


def tune(
    cfg: Config,
    trials: int,
    *,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    jobs: int = 1,
    progress: bool = True,
    outputs: bool = True,
    device: str = "auto",
) -> TuneResult:
    """Run `trials` more trials of the study (in `jobs` processes), then write the outputs of the whole study (unless
    not `outputs`: a worker whose launcher writes them)."""
    optuna = _optuna()
    from widedeep.features.prepare import prepare
    from widedeep.tune.outputs import write_outputs

    if not cfg.data.eval:
        raise ValueError(f"{cfg.path}: tune chooses on eval AUC and needs eval data ([data] eval is empty)")
    if trials < 1 or jobs < 1:
        raise ValueError(f"tune: --trials and --jobs must be >= 1, got {trials} and {jobs}")
    name = study_name or cfg.path.stem
    if not STUDY_NAME.fullmatch(name):
        raise ValueError(f"tune: a study name is letters, digits, '.', '_' and '-' (it names a folder), got {name!r}")
    top, folder = tune_dir(cfg), tune_dir(cfg) / name
    # One prepare (one process at a time): every trial reads these shards, wherever its own train.out points.
    shared = replace(cfg, data=replace(cfg.data, prepared=str(cfg.prepared_dir.resolve())))
    with _locked(top):
        prepare(shared, verbose=progress)
    url = storage or str(top / JOURNAL)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from Progress instead
    try:
        # The study, continued if it exists; the trials that dead processes left running are failed first.
        study = open_study(shared, url, name, worker="" if storage is None else f"{socket.gethostname()}:{os.getpid()}")
        fail_dead_trials(study)
        # The trials: in this process, or shared among `jobs` worker processes (which read the config file again).
        bar = Progress(study, trials, progress)
        try:
            if jobs > 1:
                _run_workers(cfg, trials, timeout, url, name, min(jobs, trials), device, bar)
            else:
                optimize(study, shared, folder, trials, timeout, device, bar)
        finally:
            bar.close()
        # The outputs of the whole study so far, one process at a time.
        notes = []
        if outputs:
            with _locked(top):
                notes = write_outputs(study, shared, folder)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return _result(study, url, folder, notes)


def tune_dir(cfg: Config) -> Path:
    return cfg.out_dir / "tune"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise MissingTuneExtra("widedeep tune needs optuna, which is not installed: pip install 'widedeep[tune]'") from None
    return optuna


# ----------------------------------------------------------------------------------------------------------------------
# Storage and study


def open_storage(url: str) -> Any:
    """A database URL (it has "://") or the path of a journal file, created if missing."""
    optuna = _optuna()
    if "://" in url:
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    from optuna.storages.journal import JournalFileBackend

    path = Path(url).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def open_study(cfg: Config, url: str, name: str, worker: str = "") -> optuna.Study:
    """Create the study (maximizing eval AUC, median pruning) or load it, with this worker's TPE sampler; refuse a study
    begun on other features or model inputs."""
    optuna = _optuna()
    pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS)
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", pruner=pruner, load_if_exists=True)
    key, found = study_key(cfg), study.user_attrs.get("key")
    if found is None:
        study.set_user_attr("key", key)
    elif found != key:
        raise ValueError(
            f"{cfg.path}: study {name!r} in {url} was begun with other features, crosses, label or model inputs; "
            "pass --study NAME to begin another"
        )
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(cfg.train.seed, len(study.trials), worker))
    return study


def study_key(cfg: Config) -> str:
    """What trials of one study must share to be compared: the features, crosses, label and the model's inputs."""
    m = cfg.model
    doc = {
        "features": [asdict(f) for f in cfg.features],
        "crosses": [asdict(c) for c in cfg.crosses],
        "label": cfg.data.label,
        "model": {"type": m.type, "wide": list(m.wide), "deep": list(m.deep)},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def sampler_seed(seed: int, trials_before: int, worker: str) -> int:
    """TPE's seed: `train.seed`, mixed with the trials already in the study (a continued study draws new values) and
    the worker (host:pid, "" for the one process of the default storage: that run is reproducible)."""
    digest = hashlib.sha256(f"{seed}:{trials_before}:{worker}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def fail_dead_trials(study: optuna.Study) -> None:
    """Mark failed the trials left running by dead processes of this host (a database storage's heartbeat fails those
    of other hosts)."""
    from optuna.trial import TrialState

    from widedeep.atomic import process_alive

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
        if host == socket.gethostname() and isinstance(pid, int) and not process_alive(pid):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------------------------------
# Trials


def optimize(
    study: optuna.Study, cfg: Config, folder: Path, trials: int, timeout: float | None, device: str, bar: Progress
) -> None:
    """Run `trials` trials in this process (fewer if `timeout` seconds pass first); a diverged trial fails alone."""
    from widedeep.train.trainer import TrainingDiverged

    params = space.search_space(cfg)
    study.optimize(
        lambda trial: objective(trial, cfg, params, folder, device),
        n_trials=trials,
        timeout=timeout,
        catch=(TrainingDiverged,),
        callbacks=[lambda *_: bar.update()],
    )


def objective(trial: optuna.Trial, base: Config, params: tuple[TuneParam, ...], folder: Path, device: str) -> float:
    """Train with the trial's settings into <folder>/trials/<number>; the saved model's eval AUC."""
    import optuna

    from widedeep.artifact import read_meta
    from widedeep.train.loop import train

    values = space.suggest(trial, params)
    for key, value in {"values": space.to_json(values), "host": socket.gethostname(), "pid": os.getpid()}.items():
        trial.set_user_attr(key, value)
    out = folder / TRIALS / f"{trial.number:04d}"
    cfg = space.apply(replace(base, train=replace(base.train, out=str(out))), values)
    last_epoch = cfg.train.epoch_limit(has_eval=True)

    def report(epochs: int, metrics: dict[str, float]) -> None:
        trial.report(metrics["auc"], epochs)
        if epochs < last_epoch and trial.should_prune():
            raise optuna.TrialPruned(f"eval AUC {metrics['auc']:.4f} after epoch {epochs}")

    try:
        model_dir = train(cfg, device=device, progress=False, on_epoch=report)
    finally:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # no trial is resumed
    metrics = read_meta(model_dir)["metrics"]
    for key in ("eval", "test", "best_epoch", "train_seconds"):
        trial.set_user_attr(key, metrics.get(key))
    trial.set_user_attr("model", str(model_dir))
    auc = (metrics.get("eval") or {}).get("auc")
    return math.nan if auc is None else float(auc)  # NaN (one-class eval data) fails the trial


def _run_workers(
    cfg: Config, trials: int, timeout: float | None, url: str, name: str, jobs: int, device: str, bar: Progress
) -> None:
    """Share `trials` among `jobs` processes of `widedeep tune` on this study; follow the study until all have ended."""
    procs = []
    for k in range(jobs):
        n = trials // jobs + (k < trials % jobs)
        argv = [sys.executable, "-m", "widedeep", "tune", str(cfg.path), "--trials", str(n), "--storage", url]
        argv += ["--study", name, "--device", device, "--worker"] + (["--timeout", str(timeout)] if timeout else [])
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(POLL_S)
            bar.update()
    except BaseException:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    bar.update()
    failed = [(k, p.returncode) for k, p in enumerate(procs) if p.returncode]
    if failed:
        raise ValueError(f"tune: worker {failed[0][0]} of {jobs} exited with status {failed[0][1]} (its error is above)")


# ----------------------------------------------------------------------------------------------------------------------
# Progress and the result


class Progress:
    """A bar over this run's trials with the best eval AUC so far, and one line per trial as it finishes."""

    def __init__(self, study: optuna.Study, total: int, enabled: bool):
        self.study = study
        self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="tune", unit="trial", dynamic_ncols=True, file=sys.stderr)

    def update(self) -> None:
        if self.bar is None:
            return
        done = [t for t in self.study.get_trials(deepcopy=False) if t.state.is_finished() and t.number not in self.seen]
        for t in sorted(done, key=lambda t: t.number):
            self.seen.add(t.number)
            self.bar.write(describe(t))
            self.bar.update(1)
        best = best_trial(self.study)
        if best is not None:
            self.bar.set_postfix_str(f"best eval AUC {best.value:.4f} (trial {best.number})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def describe(t: optuna.trial.FrozenTrial) -> str:
    """One line for a finished trial: its state and eval AUC, or where it was pruned."""
    state = t.state.name.lower()
    if state == "complete":
        return f"trial {t.number}: eval AUC {t.value:.4f}"
    if state == "pruned" and t.intermediate_values:
        step = max(t.intermediate_values)
        return f"trial {t.number}: pruned after epoch {step} (eval AUC {t.intermediate_values[step]:.4f})"
    return f"trial {t.number}: {state}"


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial of the highest eval AUC (the earliest on a tie), or None."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if math.isfinite(t.value)]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _result(study: optuna.Study, url: str, folder: Path, notes: list[str]) -> TuneResult:
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    counts = {s: states.count(s) for s in ("complete", "pruned", "fail", "running", "waiting")}
    best = best_trial(study)
    summary = None
    if best is not None:
        summary = {"number": best.number, "eval_auc": best.value, "test_auc": (best.user_attrs.get("test") or {}).get("auc")}
    return TuneResult(study.study_name, url, folder, counts, summary, tuple(notes))
