"""`widedeep ab-report`: the online result of an A/B test, per arm, from the server's impression and event logs.

    widedeep ab-report --impressions DIR... --events DIR... --window 24h [--positive install] [--control NAME]
                       [--include-immature] --out DIR

The logs are labelled by the same join as `widedeep join` (`widedeep.loop.join`: the same SQL and rules, keeping only
the impressions' keys, so no config is needed). For each arm, pooled and per UTC day of the impression time: the
impressions, the positives (impressions a positive event reached within the window), the positive rate, and its relative
lift over the control arm, ``rate_arm / rate_control - 1``.

Statistics (scipy.stats, 95%):
- a rate's interval is the Wilson score interval (``binomtest(...).proportion_ci(method="wilson")``);
- a lift's interval is the Katz log interval of the ratio of two proportions (``scipy.stats.contingency.relative_risk``,
  ``confidence_interval``): log(ratio) +- z * sqrt(1/x_a - 1/n_a + 1/x_c - 1/n_c), exponentiated, minus 1; its
  two-sided p-value is that of the same Wald statistic, log(ratio) / se, so p < 0.05 exactly when the interval excludes 0.
Both treat impressions as independent trials. Impressions of one request (or one user) that succeed or fail together make
the true intervals wider; ``impressions_per_request`` in the report says how large the clusters are.

Output (published as one folder by `widedeep.atomic`): ``ab_report.md`` (the tables), ``ab_report.json`` (the numbers;
NaN as null) and, with matplotlib (the ``plots`` extra), ``ab_report.png``: each arm's daily rate with its interval, and
each arm's daily lift over the control with its interval.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from widedeep.atomic import publish_dir, remove_stale, temp_path
from widedeep.config import Config, DataConfig, ModelConfig, TrainConfig
from widedeep.metrics import json_safe

CONFIDENCE = 0.95
CONTROL = "control"  # the control arm's name when --control is not given
REPORT_MD, REPORT_JSON, REPORT_PNG = "ab_report.md", "ab_report.json", "ab_report.png"
_LABEL = "positive"  # the label column of the keys-only join


@dataclass(frozen=True)
class ArmResult:
    """One arm's counts and rate (with its interval), and its lift over the control (None for the control itself)."""

    arm: str
    impressions: int
    positives: int
    rate: float
    rate_low: float
    rate_high: float
    lift: float | None = None  # rate / control rate - 1
    lift_low: float | None = None
    lift_high: float | None = None
    p_value: float | None = None  # two-sided, H0: the same rate as the control


@dataclass(frozen=True)
class ABReport:
    """Pooled and daily results per arm. `days` maps a day's label to that day's results (arms without impressions that
    day are absent)."""

    control: str
    arms: list[ArmResult]
    days: dict[str, list[ArmResult]]
    confidence: float = CONFIDENCE
    details: dict[str, Any] = field(default_factory=dict)  # what the join read, versions served, request sizes

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "control": self.control, "confidence": self.confidence,
            "arms": [asdict(a) for a in self.arms],
            "days": {d: [asdict(a) for a in rows] for d, rows in self.days.items()},
            **self.details,
        })  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Statistics


def rate_interval(positives: int, impressions: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion (scipy.stats.binomtest)."""
    from scipy.stats import binomtest

    ci = binomtest(positives, impressions).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def lift(
    positives: int, impressions: int, control_positives: int, control_impressions: int, confidence: float = CONFIDENCE
) -> tuple[float, float, float, float]:
    """(lift, low, high, p-value) of rate / control rate - 1: the Katz log interval of a ratio of two proportions
    (scipy.stats.contingency.relative_risk) and the two-sided p-value of its Wald statistic. NaN where undefined (no
    positives in an arm); an infinite bound stays infinite."""
    from scipy.stats import norm
    from scipy.stats.contingency import relative_risk

    rr = relative_risk(positives, impressions, control_positives, control_impressions)
    ci = rr.confidence_interval(confidence)
    ratio, low, high = float(rr.relative_risk), float(ci.low), float(ci.high)
    if positives == 0 or control_positives == 0:
        return ratio - 1.0, low - 1.0, high - 1.0, math.nan
    se = math.log(high / ratio) / norm.ppf(0.5 + confidence / 2)  # the interval's own standard error of log(ratio)
    p = 2.0 * norm.sf(abs(math.log(ratio)) / se) if se > 0 else (1.0 if ratio == 1.0 else 0.0)
    return ratio - 1.0, low - 1.0, high - 1.0, float(p)


def arm_results(counts: Mapping[str, tuple[int, int]], control: str, confidence: float = CONFIDENCE) -> list[ArmResult]:
    """Results of arms given as name -> (impressions, positives), the control first, then by name; lifts only when the
    control is among them."""
    base = counts.get(control)
    out = []
    for arm in sorted(counts, key=lambda a: (a != control, a)):
        n, x = counts[arm]
        low, high = rate_interval(x, n, confidence)
        result = ArmResult(arm, n, x, x / n, low, high)
        if base is not None and arm != control:
            up, up_low, up_high, p = lift(x, n, base[1], base[0], confidence)
            result = ArmResult(arm, n, x, x / n, low, high, up, up_low, up_high, p)
        out.append(result)
    return out


def choose_control(arms: Sequence[str], control: str | None) -> str:
    """`control` (which must be one of `arms`), else the arm named "control", else the only arm."""
    if control is not None:
        if control not in arms:
            raise ValueError(f"--control {control!r}: no such arm in the impression log (arms: {sorted(arms)})")
        return control
    if CONTROL in arms or len(arms) == 1:
        return CONTROL if CONTROL in arms else arms[0]
    raise ValueError(f"name the control arm with --control (arms in the impression log: {sorted(arms)})")


# ----------------------------------------------------------------------------------------------------------------------
# Counting from labelled impressions


def counts(table: pa.Table, label: str, by: Sequence[str] = ("arm",)) -> dict[tuple, tuple[int, int]]:
    """(impressions, positives) per distinct value of the `by` columns of a labelled impression table."""
    grouped = table.group_by(list(by)).aggregate([(label, "count"), (label, "sum")])
    keys = [grouped.column(c).to_pylist() for c in by]
    n, x = grouped.column(f"{label}_count").to_pylist(), grouped.column(f"{label}_sum").to_pylist()
    return {tuple(k): (int(a), int(b or 0)) for *k, a, b in zip(*keys, n, x)}


def report_from_table(table: pa.Table, label: str, control: str | None, day: str | None = "day") -> ABReport:
    """The report of a labelled impression table (columns arm, request_id, model_version, `label` and, for daily
    results, `day`)."""
    if table.num_rows == 0:
        raise ValueError("no labelled impressions to report on (every impression younger than the window? see --include-immature)")
    pooled = {k[0]: v for k, v in counts(table, label).items()}
    control = choose_control(list(pooled), control)
    days: dict[str, list[ArmResult]] = {}
    if day is not None:
        by_day: dict[str, dict[str, tuple[int, int]]] = {}
        for (d, arm), v in sorted(counts(table, label, (day, "arm")).items()):
            by_day.setdefault(str(d), {})[arm] = v
        days = {d: arm_results(c, control) for d, c in by_day.items()}
    versions = table.group_by(["arm", "model_version"]).aggregate([]).sort_by([("arm", "ascending"), ("model_version", "ascending")])
    served: dict[str, list[str]] = {}
    for arm, version in zip(versions.column("arm").to_pylist(), versions.column("model_version").to_pylist()):
        served.setdefault(arm, []).append(version)
    requests = pc.count_distinct(table.column("request_id")).as_py()
    details = {"model_versions": served, "requests": requests, "impressions_per_request": table.num_rows / max(requests, 1)}
    return ABReport(control, arm_results(pooled, control), days, details=details)


# ----------------------------------------------------------------------------------------------------------------------
# The command


def keys_config(label: str = _LABEL) -> Config:
    """A config that declares no features: `widedeep.loop.join.join` with it labels the impressions' keys only."""
    return Config(DataConfig(train=(), label=label), features=(), crosses=(), model=ModelConfig(), train=TrainConfig())


def ab_report(
    impressions: str | Path | Sequence[str | Path],
    events: str | Path | Sequence[str | Path],
    out: Path | str,
    *,
    window: str | timedelta = "24h",
    positive: str = "install",
    control: str | None = None,
    include_immature: bool = False,
    root: Path | None = None,
) -> ABReport:
    """Label the logs (the join of `widedeep join`), compute the report and publish `out`/ab_report.{md,json,png}."""
    from widedeep.loop.join import join

    out = Path(out)
    impressions, events = _names(impressions), _names(events)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent)
    work = temp_path(out)
    work.mkdir()
    try:
        stats = join(keys_config(), impressions, events, work / "labelled.parquet", window=window, positive=positive,
                     include_immature=include_immature, root=root)  # fmt: skip
        table = pq.read_table(work / "labelled.parquet", columns=["request_id", "time", "model_version", "arm", _LABEL])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    day = pc.strftime(table.column("time"), format="%Y-%m-%d", locale="C")
    report = report_from_table(table.append_column("day", day), _LABEL, control)
    join_info = {"window": str(stats.window), "positive": positive, "impressions_read": stats.impressions,
                 "immature": stats.immature, "include_immature": include_immature, "events_read": stats.events,
                 "events_matching_nothing": stats.unknown_request + stats.index_not_shown}  # fmt: skip
    report = ABReport(report.control, report.arms, report.days, report.confidence, {**report.details, "join": join_info})
    write_report(report, out)
    return report


def _names(spec: str | Path | Sequence[str | Path]) -> list[str]:
    return [str(spec)] if isinstance(spec, (str, Path)) else [str(p) for p in spec]


# ----------------------------------------------------------------------------------------------------------------------
# Output


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "n/a" if v is None or math.isnan(v) else ("+inf" if v > 0 else "-inf")
    return f"{v:+.2%}" if signed else f"{v:.2%}"


def markdown_table(rows: Sequence[ArmResult], reference: Mapping[str, float] | None = None) -> str:
    """One line per arm; `reference` adds a column of expected lifts (e.g. the paper's) by arm."""
    head = ["arm", "impressions", "positives", "rate (95% CI)", "lift vs control (95% CI)", "p"]
    head += ["reference lift"] if reference else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rate = f"{_pct(r.rate)} ({_pct(r.rate_low)} to {_pct(r.rate_high)})"
        up = "control" if r.lift is None else f"{_pct(r.lift, True)} ({_pct(r.lift_low, True)} to {_pct(r.lift_high, True)})"
        p = "" if r.p_value is None else ("n/a" if math.isnan(r.p_value) else f"{r.p_value:.3g}")
        cells = [r.arm, f"{r.impressions:,}", f"{r.positives:,}", rate, up, p]
        if reference:
            cells.append(_pct(reference[r.arm], True) if r.arm in reference else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: ABReport, title: str = "A/B report", reference: Mapping[str, float] | None = None,
             note: str = "", plot: str | None = None, appendix: str = "") -> str:  # fmt: skip
    """The report as Markdown: `note`, the pooled table, one table per day, the figure, `appendix`."""
    parts = [f"# {title}", ""]
    if note:
        parts += [note, ""]
    parts += [f"Control: **{report.control}**. Rates with Wilson {report.confidence:.0%} intervals; lifts with Katz log "
              f"intervals of the rate ratio (scipy.stats); impressions counted as independent trials.", ""]  # fmt: skip
    parts += ["## All days", "", markdown_table(report.arms, reference), ""]
    for day, rows in report.days.items():
        parts += [f"## {day}", "", markdown_table(rows, reference), ""]
    if plot:
        parts += [f"![daily rates and lifts]({plot})", ""]
    if appendix:
        parts += [appendix.rstrip(), ""]
    return "\n".join(parts)


def write_report(report: ABReport, out: Path | str, *, title: str = "A/B report",
                 reference: Mapping[str, float] | None = None, note: str = "", appendix: str = "") -> list[str]:  # fmt: skip
    """Publish `out`/ab_report.md, ab_report.json and (with matplotlib) ab_report.png as one folder; returns the names.
    `reference` adds expected lifts by arm (a column, dashed lines); `note` and `appendix` go above and below the tables."""
    from widedeep.report.plots import plots_available

    with publish_dir(Path(out)) as tmp:
        names = []
        if plots_available() and report.days:
            daily_plot(report, tmp / REPORT_PNG, reference)
            names.append(REPORT_PNG)
        text = markdown(report, title, reference, note, REPORT_PNG if names else None, appendix)
        (tmp / REPORT_MD).write_text(text, encoding="utf-8")
        doc = {**report.to_dict(), **({"reference_lift": dict(reference)} if reference else {})}
        (tmp / REPORT_JSON).write_text(json.dumps(json_safe(doc), indent=2) + "\n", encoding="utf-8")
        return [REPORT_MD, REPORT_JSON, *names]


def daily_plot(report: ABReport, path: Path | str, reference: Mapping[str, float] | None = None) -> Path:
    """Left: each arm's daily rate with its interval. Right: each arm's daily lift over the control with its interval,
    and the `reference` lifts as dashed lines."""
    from widedeep.report.plots import new_figure, save_figure

    days = list(report.days)
    arms = [a.arm for a in report.arms]
    fig = new_figure(11.0, 4.2)
    rate_ax, lift_ax = fig.subplots(1, 2)
    width = 0.6 / max(len(arms), 1)  # arms side by side within a day
    for i, arm in enumerate(arms):
        color = f"C{i}"
        found = {j: r for j, d in enumerate(days) for r in report.days[d] if r.arm == arm}  # day number -> result
        if not found:
            continue
        x = np.array(list(found)) + (i - (len(arms) - 1) / 2) * width
        got = list(found.values())
        rate = np.array([r.rate for r in got])
        err = np.array([[r.rate - r.rate_low for r in got], [r.rate_high - r.rate for r in got]])
        rate_ax.errorbar(x, rate * 100, yerr=err * 100, fmt="o-", capsize=3, color=color, label=arm)
        lifted = [(xi, r) for xi, r in zip(x, got) if r.lift is not None and math.isfinite(r.lift)]
        if lifted:
            lx = np.array([xi for xi, _ in lifted])
            up = np.array([r.lift for _, r in lifted])
            low = np.array([r.lift_low if math.isfinite(r.lift_low) else r.lift for _, r in lifted])
            high = np.array([r.lift_high if math.isfinite(r.lift_high) else r.lift for _, r in lifted])
            lift_ax.errorbar(lx, up * 100, yerr=np.array([up - low, high - up]) * 100, fmt="o-", capsize=3, color=color,
                             label=f"{arm} (all days {_pct(next(a.lift for a in report.arms if a.arm == arm), True)})")  # fmt: skip
        if reference and arm in reference:
            lift_ax.axhline(reference[arm] * 100, ls="--", lw=1, color=color, label=f"{arm}: reference {_pct(reference[arm], True)}")
    lift_ax.axhline(0.0, lw=1, color="grey")
    for ax in (rate_ax, lift_ax):
        ax.set_xticks(range(len(days)), days, rotation=30 if len(days) > 6 else 0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    rate_ax.set(xlabel="day", ylabel="positive rate (%)", title=f"Daily rate per arm ({report.confidence:.0%} CI)")
    lift_ax.set(xlabel="day", ylabel=f"lift over {report.control} (%)", title=f"Daily lift over {report.control} ({report.confidence:.0%} CI)")
    return save_figure(fig, path)
