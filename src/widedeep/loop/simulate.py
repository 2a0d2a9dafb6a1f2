"""`widedeep simulate`: the paper's online experiment (its Figure 3 loop and the A/B result of its Table 1) on the
app-store simulator, every step run by the real components.

    widedeep simulate [--days 3] [--users 2000] [--arms wide,deep,wide_deep] [--seed 0] [--offline-rows 200000] --out DIR

Day 0: the simulator's offline log (`widedeep.datasets.app_store`) trains one model per arm, of the arm's type (wide
only, deep only, wide & deep: `widedeep demo`'s config with its model type set, prepared once for all), and each is
promoted into the arm's own registry (validated on the generator's eval split; a dry run, as the registry is empty).

Then one `widedeep serve --arms wide=REG:1,deep=REG:1,... --split-key user_id --log-dir DIR/logs` process on
127.0.0.1 serves every arm, each following its registry (hot reload). Each day after that:

1. `--users` requests arrive (`widedeep.loop.traffic`: users by activity, 100 candidates each by popularity plus
   exploration) and POST /v1/recommend with their user_id, so the server keeps every user in one arm; a user looks at
   the top 10 with an attention that decays with position and installs by the simulator's ground truth; the installs
   are POSTed to /v1/events. The server logs the impressions and the events.
2. At night `widedeep join` labels the day's logs (all of them: a simulated day lasts seconds, far less than the 24 h
   window, and its outcomes are all in, so immature impressions are kept) and the rows are split by arm. Each arm runs
   `widedeep retrain` on its own rows: one epoch over its window (the offline log's last day, as the history's day 0,
   and the arm's logged days; vocabularies refitted on it), warm-started from the model it serves, validated on the
   day's holdout against that model, promoted when it passes. The run waits until the server serves every newly
   promoted version.

Output in DIR/report (`widedeep.loop.abreport`): each arm's daily install rate with its 95% interval and its lift over
the wide arm (the control), beside the paper's online gains (deep +2.9%, wide & deep +3.9%), as ab_report.md, .json
and .png; its appendix adds the ground truth's expected install rate of what each arm showed (without the noise of the
install draws), the nightly promotions and the time each phase took. The rest of DIR: data/ (the offline log),
arms/<arm>/ (config.toml, registry/, history/, runs/), logs/ (the server's), days/<date>/labelled.parquet (the nightly
join), server.log.
"""

from __future__ import annotations

import datetime as dt
import sys
import tomllib
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow.compute as pc
import pyarrow.parquet as pq

from widedeep.atomic import publish_file
from widedeep.config import Config, load
from widedeep.loop.abreport import ABReport, arm_results, write_report
from widedeep.loop.traffic import CANDIDATES, K, ServerProcess, catalogue, contexts, installs, retrieve
from widedeep.loop.traffic import arrivals as arriving_users
from widedeep.train.compare import MODEL_TYPES, PAPER

if TYPE_CHECKING:
    from widedeep.loop.retrain import RetrainResult

CONTROL = "wide"
Say = Callable[[str], None]
START = dt.date(2026, 1, 1)  # day 0's date: the simulated days are START + d
OFFLINE_DAYS = 10  # the offline log is this many days of traffic, in one file each; the last is day 0 of the history
WINDOW = "24h"
POSITIVE = "install"


@dataclass(frozen=True)
class Simulation:
    """The sizes of one simulated experiment (`widedeep simulate`'s flags)."""

    days: int = 3
    users: int = 2000  # requests per day
    arms: tuple[str, ...] = MODEL_TYPES
    seed: int = 0
    offline_rows: int = 200_000  # day 0's training log (OFFLINE_DAYS days)
    candidates: int = CANDIDATES
    k: int = K

    def __post_init__(self) -> None:
        if self.days < 1 or self.users < 1 or self.offline_rows < 1000:
            raise ValueError(f"--days and --users must be >= 1 and --offline-rows >= 1000, got {self.days}, {self.users}, {self.offline_rows}")
        bad = [a for a in self.arms if a not in MODEL_TYPES]
        if bad or not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"--arms {','.join(self.arms)!r}: name each of {', '.join(MODEL_TYPES)} at most once")
        if not 1 <= self.k <= self.candidates:
            raise ValueError(f"k must lie in [1, candidates={self.candidates}], got {self.k}")

    @property
    def control(self) -> str:
        return CONTROL if CONTROL in self.arms else self.arms[0]


@dataclass
class DayTraffic:
    """What the simulated users of one day did: per request its arm and, per shown position, the install probability
    (attention x ground truth) and the install drawn."""

    arm: np.ndarray  # (R,) str
    expected: np.ndarray  # (R, k)
    installed: np.ndarray  # (R, k) bool
    shown: np.ndarray  # (R, k) bool: the positions the answer filled
    seconds: float = 0.0


@dataclass
class Run:
    """The simulation's state, day by day."""

    sim: Simulation
    out: Path
    configs: dict[str, Config] = field(default_factory=dict)
    counts: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # day -> arm -> (impressions, installs)
    expected: dict[str, dict[str, float]] = field(default_factory=dict)  # day -> arm -> expected installs
    served: dict[str, dict[str, str | None]] = field(default_factory=dict)  # day -> arm -> registry version served
    nights: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def registry(self, arm: str) -> Path:
        return self.out / "arms" / arm / "registry"


def simulate(sim: Simulation, out: Path | str, progress: bool = True) -> ABReport:
    """Run the experiment into `out` (a new or empty folder) and return its report (also in `out`/report)."""
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out}: the folder is not empty; a simulation starts in a new or empty folder")
    say = (lambda msg: print(f"widedeep simulate: {msg}", file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    run = Run(sim, out)
    t0 = time.perf_counter()

    # Day 0: the offline log, one model per arm trained, validated and promoted into the arm's registry.
    _day_zero(run, say)
    run.seconds["day 0"] = time.perf_counter() - t0

    # The days: one server for every arm; traffic by day, the loop by night.
    specs = ",".join(f"{arm}={run.registry(arm)}:1" for arm in sim.arms)
    args = ["--arms", specs, "--split-key", "user_id", "--log-dir", str(out / "logs"), "--log-roll-seconds", "0.5",
            "--poll", "0.2", "--log-level", "warning"]  # fmt: skip
    t = time.perf_counter()
    with ServerProcess(args, out / "server.log") as server:
        run.seconds["server start"] = time.perf_counter() - t
        for d in range(1, sim.days + 1):
            day = (START + dt.timedelta(days=d)).isoformat()
            run.served[day] = server.served(sim.arms)
            t = time.perf_counter()
            traffic, files = _day(run, server, d, say)
            run.seconds[f"day {d} traffic"] = time.perf_counter() - t
            t = time.perf_counter()
            _night(run, server, d, traffic, files, say)
            run.seconds[f"day {d} night"] = time.perf_counter() - t
    run.seconds["total"] = time.perf_counter() - t0
    report = _report(run)
    say(f"done in {run.seconds['total']:.0f} s; report in {out / 'report'}")
    return report


# ----------------------------------------------------------------------------------------------------------------------
# Day 0


def arm_config(run: Run, arm: str) -> Config:
    """`widedeep demo`'s config with model type `arm`, trained on the offline log (prepared once for every arm), its runs
    and retraining history under arms/<arm>/; the retrain window spans every simulated day and day 0 before them."""
    from widedeep.demo import dumps_toml, shipped_config

    folder = run.out / "arms" / arm
    raw = tomllib.loads(shipped_config())
    data = run.out / "data"
    raw["data"] = {"train": [str(data / "train")], "label": raw["data"]["label"], "prepared": str(data / "prepared")}
    raw["model"]["type"] = arm
    raw["train"] = {**raw["train"], "out": str(folder / "runs"), "seed": run.sim.seed}
    raw["retrain"] = {"history": str(folder / "history"), "window_days": run.sim.days + 1}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(dumps_toml(raw), encoding="utf-8")
    return load(folder / "config.toml")


def _day_zero(run: Run, say: Say) -> None:
    """`widedeep train` of each arm's config on the offline log, then `widedeep promote` into the arm's registry, validated
    (a dry run: the registry is empty) on the generator's eval split. The offline log's last day is day 0 of each arm's
    retraining history."""
    from widedeep.datasets.app_store import write_app_store
    from widedeep.loop.retrain import store_day
    from widedeep.serve.registry import Registry
    from widedeep.train.loop import train

    sim = run.sim
    say(f"day 0: writing {sim.offline_rows:,} offline impressions")
    parts, holdout = write_app_store(run.out / "data", sim.offline_rows, max(sim.offline_rows // 10, 1000), seed=sim.seed,
                                     rows_per_file=-(-sim.offline_rows // OFFLINE_DAYS))  # fmt: skip
    for arm in sim.arms:
        run.configs[arm] = cfg = arm_config(run, arm)
        say(f"day 0: training the {arm} arm's model")
        model_dir = train(cfg, progress=False)
        report = Registry(run.registry(arm), create=True).promote(model_dir, data=holdout)
        if not report.passed:
            raise RuntimeError(f"day 0: the {arm} model was not promoted:\n{report.to_text()}")
        store_day([str(parts[-1])], cfg.resolve(cfg.retrain.history), START)
        version = Registry(run.registry(arm)).current_version()
        run.nights.append({"day": START.isoformat(), "arm": arm, "promoted": True, "version": version, "warm_start": None,
                           "holdout_auc": {"new": report.metrics.get("new", {}).get("auc")}, "failed_checks": []})  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# A day: the users' traffic


def _parts(folder: Path) -> set[Path]:
    return set(folder.glob("part-*.parquet")) if folder.is_dir() else set()


def _day(run: Run, server: ServerProcess, d: int, say: Say) -> tuple[DayTraffic, dict[str, list[Path]]]:
    sim = run.sim
    logs = {name: run.out / "logs" / name for name in ("impressions", "events")}
    before = {name: _parts(folder) for name, folder in logs.items()}
    t = time.perf_counter()
    users = arriving_users(sim.seed, d, sim.users)
    candidates = retrieve(sim.seed, d, sim.users, sim.candidates)  # (R, C) app ids
    records, ctx = catalogue(sim.seed), contexts(sim.seed, users)
    bodies = [
        orjson.dumps({"request_id": f"d{d}-r{r}", "context": ctx[r], "candidates": [records[a] for a in candidates[r]], "k": sim.k})
        for r in range(sim.users)
    ]
    answers = server.client.recommend_all(bodies)
    index = np.full((sim.users, sim.k), -1, dtype=np.int64)  # the shown candidates' indices, by position
    for r, a in enumerate(answers):
        got = [item["index"] for item in a["items"]]
        index[r, : len(got)] = got
    shown = np.where(index >= 0, np.take_along_axis(candidates, index.clip(0), axis=1), -1)
    installed, expected = installs(sim.seed, d, users, shown)
    events = [{"request_id": f"d{d}-r{r}", "index": int(index[r, p]), "type": POSITIVE} for r, p in zip(*np.nonzero(installed))]
    server.client.post_events(events)
    traffic = DayTraffic(np.array([a["arm"] for a in answers]), expected, installed, index >= 0, time.perf_counter() - t)
    say(f"day {d}: {sim.users} requests, {int(traffic.shown.sum())} impressions, {len(events)} installs "
        f"({sim.users / traffic.seconds:.0f} requests/s)")  # fmt: skip
    want = {"impressions": int(traffic.shown.sum()), "events": len(events)}
    return traffic, _wait_for_logs(logs, before, want)


def _wait_for_logs(logs: dict[str, Path], before: dict[str, set[Path]], want: dict[str, int], timeout: float = 60.0) -> dict[str, list[Path]]:
    """The part files each log wrote since `before`, once they hold the `want`ed rows."""
    deadline = time.monotonic() + timeout
    while True:
        new = {name: sorted(_parts(folder) - before[name]) for name, folder in logs.items()}
        rows = {name: sum(pq.read_metadata(p).num_rows for p in files) for name, files in new.items()}
        if rows == want:
            return new
        if any(rows[n] > want[n] for n in rows) or time.monotonic() > deadline:
            raise RuntimeError(f"the server logged {rows} rows for the day, expected {want} (see /metrics for dropped rows)")
        time.sleep(0.1)


# ----------------------------------------------------------------------------------------------------------------------
# A night: join, retrain (validate, promote), hot reload


def _night(run: Run, server: ServerProcess, d: int, traffic: DayTraffic, files: dict[str, list[Path]], say: Say) -> None:
    from widedeep.loop.join import join
    from widedeep.loop.retrain import retrain
    from widedeep.serve.registry import Registry

    sim, day = run.sim, (START + dt.timedelta(days=d)).isoformat()
    folder = run.out / "days" / day
    labelled = folder / "labelled.parquet"
    cfg = run.configs[sim.arms[0]]  # the arms' configs differ in the model type only: one join labels every arm's rows
    join(cfg, [str(p) for p in files["impressions"]], [str(p) for p in files["events"]], labelled,
                 window=WINDOW, positive=POSITIVE, include_immature=True)  # fmt: skip
    table = pq.read_table(labelled)
    label = cfg.data.label
    run.counts[day], run.expected[day] = {}, {}
    for arm in sim.arms:
        # in request order, not arrival order: the clients' concurrency must not change what the model trains on
        mine = table.filter(pc.equal(table.column("arm"), arm)).sort_by([("request_id", "ascending"), ("position", "ascending")])
        n, x = mine.num_rows, int(pc.sum(mine.column(label)).as_py() or 0)
        posted = int(traffic.installed[traffic.arm == arm].sum())
        if x != posted or n != int(traffic.shown[traffic.arm == arm].sum()):
            raise RuntimeError(f"day {d}, arm {arm}: the join labelled {n} impressions with {x} installs; the users saw "
                               f"{int(traffic.shown[traffic.arm == arm].sum())} and installed {posted}")  # fmt: skip
        run.counts[day][arm] = (n, x)
        run.expected[day][arm] = float(traffic.expected[traffic.arm == arm].sum())
        if n == 0:
            continue
        arm_file = run.out / "arms" / arm / "logged" / f"{day}.parquet"
        with publish_file(arm_file) as tmp:
            pq.write_table(mine, tmp)
        say(f"night {d}: retraining the {arm} arm on its {n} impressions ({x} installs)")
        result = retrain(run.configs[arm], run.registry(arm), [str(arm_file)], day=day, progress=False)
        run.nights.append(_night_record(day, arm, result))
        say(f"night {d}: {result.summary()}")
    server.wait_for({arm: Registry(run.registry(arm)).current_version() for arm in sim.arms})


def _night_record(day: str, arm: str, result: RetrainResult) -> dict[str, Any]:
    metrics = result.report.metrics if result.report is not None else {}
    return {
        "day": day, "arm": arm, "promoted": result.promoted, "version": result.version, "warm_start": result.warm_start,
        "holdout_auc": {k: m.get("auc") for k, m in metrics.items()},
        "failed_checks": [c.detail for c in result.report.checks if not c.passed] if result.report is not None else [],
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# The report


def paper_lifts() -> dict[str, float]:
    """The paper's online acquisition gains over the wide-only control (its Table 1), as fractions."""
    return {kind: float(row["online_gain"].rstrip("%")) / 100 for kind, row in PAPER.items() if kind != "wide"}


def _report(run: Run) -> ABReport:
    sim, control = run.sim, run.sim.control
    days = {f"day {i + 1}": arm_results(c, control) for i, c in enumerate(run.counts.values())}
    pooled = {arm: tuple(sum(c[arm][j] for c in run.counts.values()) for j in (0, 1)) for arm in sim.arms}
    expected = {arm: sum(e[arm] for e in run.expected.values()) / max(pooled[arm][0], 1) for arm in sim.arms}
    details = {
        "simulation": {**{k: v for k, v in vars(sim).items() if k != "arms"}, "arms": list(sim.arms)},
        "expected_rate": expected,
        "expected_rate_by_day": {f"day {i + 1}": {a: e[a] / max(run.counts[d][a][0], 1) for a in sim.arms}
                                 for i, (d, e) in enumerate(run.expected.items())},  # fmt: skip
        "served": run.served,
        "nights": run.nights,
        "seconds": {k: round(v, 1) for k, v in run.seconds.items()},
    }
    report = ABReport(control, arm_results(pooled, control), days, details=details)
    note = (f"{sim.days} simulated days of {sim.users:,} requests ({sim.candidates} candidates, top {sim.k} shown), "
            f"seed {sim.seed}; each user in one arm by a hash of user_id; installs by the simulator's ground truth, "
            f"looked at with probability 1/log2(position + 2). Reference: the paper's online gains over wide only.")  # fmt: skip
    write_report(report, run.out / "report", title="Simulated online experiment", reference=paper_lifts(),
                 note=note, appendix=_appendix(run, expected, pooled))  # fmt: skip
    return report


def _appendix(run: Run, expected: dict[str, float], pooled: dict[str, tuple[int, int]]) -> str:
    control = run.sim.control
    lines = ["## Ground truth", "",
             "Expected install rate: the mean over shown items of attention x install probability, i.e. the rate "
             "without the noise of the install draws.", "",
             "| arm | impressions | expected rate | its lift vs control |", "|---|---|---|---|"]  # fmt: skip
    for arm in sorted(run.sim.arms, key=lambda a: (a != control, a)):
        up = "control" if arm == control else f"{expected[arm] / expected[control] - 1:+.2%}"
        lines.append(f"| {arm} | {pooled[arm][0]:,} | {expected[arm]:.2%} | {up} |")
    lines += ["", "## Nightly retraining", "", "| day | arm | promoted | version | holdout AUC new / current |", "|---|---|---|---|---|"]
    for n in run.nights:
        aucs = [n["holdout_auc"][k] for k in ("new", "current") if k in n["holdout_auc"]]
        auc = " / ".join("n/a" if v is None else f"{v:.4f}" for v in aucs)
        lines.append(f"| {n['day']} | {n['arm']} | {'yes' if n['promoted'] else 'no'} | {n['version'] or ''} | {auc} |")
    lines += ["", "## Time", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in run.seconds.items()]
    return "\n".join(lines)


def parse_arms(text: str) -> tuple[str, ...]:
    """'wide,deep,wide_deep' -> the arms' model types (checked by Simulation)."""
    return tuple(a.strip() for a in text.split(",") if a.strip())

