"""What a study leaves in the tune folder: best.toml, the trial table (Parquet and Markdown), the best model, history.png."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from widedeep.atomic import publish_dir, publish_file, write_text_atomic
from widedeep.config import Config, to_dict
from widedeep.tune import space
from widedeep.tune.study import best_trial

if TYPE_CHECKING:
    import optuna

FIXED_COLUMNS = ("trial", "state", "eval_auc", "eval_logloss", "test_auc", "test_logloss", "epochs", "seconds", "host")


def write_outputs(study: optuna.Study, cfg: Config, folder: Path) -> list[str]:
    """Write every output of the study so far into `folder`; returns notes on those skipped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    best = best_trial(study)
    rows = trial_rows(trials)
    with publish_file(folder / "trials.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    write_text_atomic(folder / "trials.md", markdown(rows, study.study_name, None if best is None else best.number))
    notes = []
    if best is not None:
        best_cfg = space.apply(cfg, space.from_json(best.user_attrs["values"]))
        comment = f"best trial {best.number} of study {study.study_name!r}"
        write_text_atomic(folder / "best.toml", config_toml(best_cfg, folder, comment))
        notes += copy_model(Path(best.user_attrs["model"]), folder / "model", best.user_attrs.get("host", "?"))
    if importlib.util.find_spec("matplotlib") is None:
        notes.append("history.png skipped: matplotlib is not installed (pip install 'widedeep[plots]')")
    elif trials:
        history_plot(trials, folder / "history.png")
    return notes


# ----------------------------------------------------------------------------------------------------------------------
# The trial table


def trial_rows(trials: list[optuna.trial.FrozenTrial]) -> list[dict[str, Any]]:
    """One row per trial: state, eval metrics (the pruned at their last report), test metrics (for information), the
    epochs trained, seconds, host, then one column per searched setting (layer lists as text)."""
    rows, names = [], []
    for t in trials:
        ev, test = t.user_attrs.get("eval") or {}, t.user_attrs.get("test") or {}
        last = max(t.intermediate_values) if t.intermediate_values else None
        done = t.state.name == "COMPLETE"
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        row = {
            "trial": t.number,
            "state": t.state.name.lower(),
            "eval_auc": t.value if done else (t.intermediate_values[last] if last is not None else None),
            "eval_logloss": ev.get("logloss"),
            "test_auc": test.get("auc"),
            "test_logloss": test.get("logloss"),
            "epochs": t.user_attrs.get("best_epoch") if done else last,
            "seconds": seconds,
            "host": t.user_attrs.get("host"),
        }
        values = {k: space.label(v) for k, v in space.from_json(t.user_attrs.get("values", {})).items()}
        names += [k for k in values if k not in names]
        rows.append({**row, **values})
    return [{**dict.fromkeys((*FIXED_COLUMNS, *names)), **r} for r in rows]  # every row has every column


def markdown(rows: list[dict[str, Any]], study: str, best: int | None) -> str:
    """The trial table in Markdown, the best trial marked; test AUC is shown for information only."""
    columns = [c for c in rows[0] if c != "host"] if rows else list(FIXED_COLUMNS)
    lines = [
        f"# Study {study!r}: {len(rows)} trials",
        "",
        "Chosen on eval AUC; the test columns are for information and never chose anything.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if c not in ("state",) else "---" for c in columns) + "|",
    ]
    for r in rows:
        cells = [_cell(c, r[c]) for c in columns]
        if r["trial"] == best:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(column: str, x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if not isinstance(x, float):
        return str(x)
    if column.endswith(("_auc", "_logloss")):
        return f"{x:.4f}"
    return f"{x:.1f}" if column == "seconds" else f"{x:.4g}"


# ----------------------------------------------------------------------------------------------------------------------
# best.toml: the config as TOML, its paths relative to the folder it is written to


def config_toml(cfg: Config, folder: Path, comment: str = "") -> str:
    """`cfg` as a TOML document that `widedeep.config.load` reads back to the same settings from `folder`."""
    doc = to_dict(cfg)
    rel = lambda p: os.path.relpath(p, folder.resolve())  # noqa: E731
    data = doc["data"]
    for split in ("train", "eval", "test"):
        data[split] = [rel(cfg.resolve(p)) for p in data[split]]
    data["prepared"] = rel(cfg.prepared_dir)
    doc["train"]["out"] = rel(cfg.out_dir)
    head = [f"# {comment}"] if comment else []
    return "\n".join(head + _toml_table(doc, ())).lstrip("\n") + "\n"


def _toml_table(table: dict[str, Any], prefix: tuple[str, ...]) -> list[str]:
    values = [(k, v) for k, v in table.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    lines = []
    if prefix and (values or not tables):
        lines += ["", "[" + ".".join(prefix) + "]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values]
    for k, v in tables:
        lines += _toml_table(v, (*prefix, _toml_key(k)))
    return lines


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):  # a JSON string is a TOML basic string, but for DEL, which TOML wants escaped
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


# ----------------------------------------------------------------------------------------------------------------------
# The best model, and the history plot


def copy_model(source: Path, target: Path, host: str) -> list[str]:
    """Publish a copy of the best trial's model as `target` (unless it already is that model); a note if not here."""
    from widedeep.artifact import ArtifactError, read_meta

    if not source.is_dir():
        return [f"{target} not written: the best model is in {source} on host {host}"]
    files = read_meta(source)["files"]  # verifies every checksum of the source
    try:
        if read_meta(target)["files"] == files:
            return []
    except ArtifactError:  # no model there yet, or a damaged one: replace it
        pass
    with publish_dir(target) as tmp:
        for f in source.iterdir():
            shutil.copy2(f, tmp / f.name)
    return []


def history_plot(trials: list[optuna.trial.FrozenTrial], path: Path) -> Path:
    """Eval AUC per trial (pruned trials at their last report) and the best so far."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    done = [(t.number, t.value) for t in trials if t.state.name == "COMPLETE" and math.isfinite(t.value)]
    last = [t for t in trials if t.state.name == "PRUNED" and t.intermediate_values]
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in last]
    if done:
        ax.scatter(*zip(*done), s=18, label="complete")
        best, line = -math.inf, []
        for n, v in done:
            best = max(best, v)
            line.append((n, best))
        line.append((trials[-1].number, best))
        ax.step(*zip(*line), where="post", color="C3", label="best so far")
    if pruned:
        ax.scatter(*zip(*pruned), s=18, marker="x", color="grey", label="pruned (last report)")
    ax.set(xlabel="trial", ylabel="eval AUC", title="tune: eval AUC per trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(loc="best")
    with publish_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
