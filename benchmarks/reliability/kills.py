"""Area 1: `kill -9` at seeded random points of `widedeep prepare`, `widedeep train` and the model write, then train again.

A reference run (`widedeep train`, which prepares the data first, with a checkpoint every 5 steps) gives the AUC and
weights that every interrupted run must end with, and the moments at which each phase writes: the prepared folder's
temporary name exists, the checkpoints folder appears, the model's temporary folder exists. Each kill waits for its
phase's first sign on disk and fires after a random fraction of that phase's length in the reference run. After the
kill, whatever exists must verify (the prepared folder is fresh, every checkpoint passes `read_checkpoint`, `model/`
passes `Model.load`); then the next run (`train`, or `train --resume=auto` after a kill during training) must succeed,
leave no temporary name behind, and end with the reference's eval AUC and weights (a difference counts as lost work).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .common import Area, Row, config_text, kill_group, last_line, run_cli, start, temp_leftovers, widedeep_cmd

POLL_S = 0.0005  # how often the file system is looked at while waiting for a phase (a model write takes milliseconds)



@dataclass(frozen=True)
class Phase:
    title: str  # the row
    cmd: tuple[str, ...]  # what is killed
    again: tuple[str, ...]  # the next run
    start: str  # what the trial folder holds first: "empty", the reference's "prepared" data, or its "finished" run
    event: str  # the sign on disk the kill waits for
    end: str  # the sign that ends the phase (in the reference run)


RESUME = ("train", "--resume=auto")
PHASES = {
    "prepare": Phase("kill during prepare", ("prepare",), ("train",), "empty", "prepared_tmp", "prepared_tmp_end"),
    "train": Phase("kill during train", ("train",), RESUME, "prepared", "checkpoints", "model_tmp"),
    "write": Phase("kill during the model write", ("train",), RESUME, "prepared", "model_tmp", "model_tmp_end"),
    "replace": Phase("kill while replacing model/", RESUME, RESUME, "finished", "model_tmp", "model_tmp_end"),
}


def _has(folder: Path, prefix: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return any(n.startswith(prefix) for n in os.listdir(folder))
        except FileNotFoundError:
            return False

    return check


def _events(run: Path) -> dict[str, Callable[[], bool]]:
    """Signs on disk of each phase, as presence tests (an `_end` event is the moment a present sign goes away)."""
    return {
        "prepared_tmp": _has(run, ".prepared.tmp-"),
        "checkpoints": (run / "checkpoints").is_dir,
        "model_tmp": lambda: _has(run, ".model.tmp-")() or _has(run, ".model.old-")(),
    }


@dataclass
class Watched:
    rc: int | None
    killed: bool
    seconds: float
    on: dict[str, float] = field(default_factory=dict)  # event -> seconds after the start when first seen


def run_watched(cmd: list[str], cwd: Path, log: Path, kill_at: tuple[str, float] | None = None, timeout: float = 600) -> Watched:
    """Run `widedeep CMD`, watching the run folder's events; with `kill_at` (event, delay), SIGKILL its process group
    `delay` seconds after the event is first seen."""
    events = _events(cwd / "run")
    on: dict[str, float] = {}
    t0 = time.monotonic()
    p = start(widedeep_cmd(*cmd), cwd, log)
    sent = False
    while p.poll() is None:
        now = time.monotonic() - t0
        for name, present in events.items():
            if name not in on and present():
                on[name] = now
            elif name in on and f"{name}_end" not in on and not present():
                on[f"{name}_end"] = now
        if kill_at and not sent and kill_at[0] in on and now >= on[kill_at[0]] + kill_at[1]:
            sent = p.poll() is None
            kill_group(p)
        if now > timeout:
            kill_group(p)
        time.sleep(POLL_S)
    for name in events:  # a sign that was there at the end went away with the process
        if name in on and f"{name}_end" not in on:
            on[f"{name}_end"] = time.monotonic() - t0
    rc = p.wait()
    return Watched(rc, sent and rc == -signal.SIGKILL, time.monotonic() - t0, on)


@dataclass
class Reference:
    folder: Path
    eval: Path
    auc: float
    weights_sha: str
    windows: dict[str, float]  # phase -> seconds between its start and end events


def reference_run(folder: Path, train: Path, eval: Path, epochs: int) -> Reference:
    """An uninterrupted `widedeep train` (prepare included); its AUC, weights and the length of each phase's window on disk."""
    from widedeep.artifact import Model

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(config_text(str(train), str(eval), epochs))
    w = run_watched(["train", "config.toml"], folder, folder / "train.log")  # runs prepare first, as the data is new
    if w.rc != 0:
        raise RuntimeError(f"reference training failed ({folder}): {last_line((folder / 'train.log').read_text())}")
    windows = {name: max(w.on.get(p.end, 0.0) - w.on.get(p.event, 0.0), 0.002) for name, p in PHASES.items()}
    model = Model.load(folder / "run" / "model")
    return Reference(folder, eval, model.evaluate(eval)["auc"], model.meta["files"]["model.safetensors"]["sha256"], windows)


def _corruption(case: Path) -> list[str]:
    """What exists in the run folder and does not verify."""
    from widedeep.artifact import Model
    from widedeep.config import load
    from widedeep.features.prepare import is_fresh
    from widedeep.train.checkpoint import read_checkpoint

    run, bad = case / "run", []
    if (run / "prepared").exists() and not is_fresh(load(case / "config.toml")):
        bad.append("prepared/ exists but is not complete and fresh")
    for ckpt in sorted((run / "checkpoints").glob("*/step-*")):
        try:
            read_checkpoint(ckpt)
        except Exception as e:  # noqa: BLE001 -- every way of failing is reported
            bad.append(f"{ckpt.relative_to(case)}: {type(e).__name__}: {e}")
    if (run / "model").exists():
        try:
            Model.load(run / "model")
        except Exception as e:  # noqa: BLE001
            bad.append(f"model/: {type(e).__name__}: {e}")
    return bad


@dataclass
class Outcome:
    phase: str
    killed: bool
    failed: list[str]
    corrupt: list[str]
    lost: list[str]


def trial(phase: str, index: int, seed: int, ref: Reference, root: Path) -> Outcome:
    """One kill at a seeded random point of `phase`, the inspection, the next run and its comparison with the reference."""
    from widedeep.artifact import Model

    p = PHASES[phase]
    case = root / f"{phase}-{index}"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    shutil.copy(ref.folder / "config.toml", case / "config.toml")
    if p.start == "prepared":
        shutil.copytree(ref.folder / "run" / "prepared", case / "run" / "prepared")
    elif p.start == "finished":
        shutil.copytree(ref.folder / "run", case / "run")
    delay = random.Random(f"{seed}:{phase}:{index}").uniform(0.0, ref.windows[phase])
    w = run_watched([*p.cmd, "config.toml"], case, case / "killed.log", kill_at=(p.event, delay))
    failed, lost = [], []
    how = f"#{index} ({delay * 1000:.1f} ms after {p.event})"
    if not w.killed and w.rc != 0:
        failed.append(f"{how}: exited {w.rc} before the kill: {last_line((case / 'killed.log').read_text())}")
    corrupt = [f"{how} after the kill: {c}" for c in _corruption(case)]

    r = run_cli([*p.again, "config.toml"], case)
    (case / "again.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        failed.append(f"{how}: `widedeep {' '.join(p.again)}` exited {r.returncode}: {last_line(r.stderr)}")
        return Outcome(phase, w.killed, failed, corrupt, lost)
    if left := temp_leftovers(case):
        failed.append(f"{how}: temporary names left after the next run: {left[:3]}")
    corrupt += [f"{how} after the next run: {c}" for c in _corruption(case)]
    try:
        model = Model.load(case / "run" / "model")
    except Exception as e:  # noqa: BLE001 -- reported as corrupt above
        lost.append(f"{how}: no loadable model after the next run ({type(e).__name__})")
        return Outcome(phase, w.killed, failed, corrupt, lost)
    auc, sha = model.evaluate(ref.eval)["auc"], model.meta["files"]["model.safetensors"]["sha256"]
    if auc != ref.auc or sha != ref.weights_sha:
        same = "same weights" if sha == ref.weights_sha else "other weights"
        lost.append(f"{how}: eval AUC {auc:.6f} vs {ref.auc:.6f} uninterrupted ({same})")
    return Outcome(phase, w.killed, failed, corrupt, lost)


def run_area(
    root: Path, train: Path, eval: Path, epochs: int, kills: dict[str, int], seed: int, jobs: int
) -> tuple[Area, Reference]:
    """The reference run, then every trial (`jobs` at a time); one row per phase."""
    t0 = time.monotonic()
    ref = reference_run(root / "reference", train, eval, epochs)
    plan = [(phase, i) for phase, n in kills.items() for i in range(n)]
    with ThreadPoolExecutor(max(jobs, 1)) as pool:
        outcomes = list(pool.map(lambda pi: trial(pi[0], pi[1], seed, ref, root / "trials"), plan))
    rows = []
    for phase in kills:
        row = Row(PHASES[phase].title, killed=0, lost=0, corrupt=0)
        for o in (o for o in outcomes if o.phase == phase):
            row.tried += 1
            row.killed += o.killed
            row.failed += bool(o.failed)
            row.corrupt += bool(o.corrupt)
            row.lost += bool(o.lost)
            for note in (*o.failed, *o.corrupt, *o.lost):
                row.note(note)
        rows.append(row)
    windows = ", ".join(f"{p} {ref.windows[p] * 1000:.0f} ms" for p in kills)
    title = f"area 1: kill -9, then train again (reference AUC {ref.auc:.4f}; phase windows {windows})"
    return Area(title, rows, time.monotonic() - t0), ref
