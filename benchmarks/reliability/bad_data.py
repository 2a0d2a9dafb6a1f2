"""Area 3: bad inputs and configs run through `widedeep train CONFIG` as a process. Each must exit non-zero with a
one-line error (`widedeep train: error: ...`, no traceback) that names the file, column or key at fault, and must leave
no model directory and no temporary name behind."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .common import Area, Row, config_text, last_line, run_cli, temp_leftovers

LABEL = "installed"


@dataclass(frozen=True)
class Case:
    row: str
    name: str
    names: tuple[str, ...]  # what the error line must mention (all of them)
    train: Callable[[pa.Table], pa.Table | bytes | None] = lambda t: t  # the train file's contents (None: no file)
    eval: Callable[[pa.Table], pa.Table | bytes | None] = lambda t: t
    config: Callable[[str], str] = lambda text: text  # edits of the config text
    smoke: bool = False  # part of the --smoke size


def _set(column: str, values: Callable[[pa.Table], pa.Array]) -> Callable[[pa.Table], pa.Table]:
    def apply(t: pa.Table) -> pa.Table:
        return t.set_column(t.schema.get_field_index(column), column, values(t))

    return apply


def _labels(values: Callable[[int], list]) -> Callable[[pa.Table], pa.Table]:
    return _set(LABEL, lambda t: pa.array(values(t.num_rows)))


def _replace(old: str, new: str) -> Callable[[str], str]:
    def apply(text: str) -> str:
        if old not in text:
            raise RuntimeError(f"config template has no {old!r}")
        return text.replace(old, new, 1)

    return apply


def cases() -> list[Case]:
    label_col = (LABEL,)
    return [
        Case("label column", "label column missing", label_col, train=lambda t: t.drop_columns([LABEL]), smoke=True),
        Case("label column", "labels 0/1/2", label_col, train=_labels(lambda n: [i % 3 for i in range(n)])),
        Case("label column", "labels 0.0/0.5/1.0", label_col, train=_labels(lambda n: [(i % 3) / 2 for i in range(n)])),
        Case("label column", "labels -1/1", label_col, train=_labels(lambda n: [1 if i % 2 else -1 for i in range(n)])),
        Case("label column", "a single class (all 0)", label_col, train=_labels(lambda n: [0] * n), smoke=True),
        Case("label column", "null labels", label_col, train=_labels(lambda n: [None if i % 7 == 0 else i % 2 for i in range(n)])),
        Case("label column", "labels 'yes'/'no'", label_col, train=_labels(lambda n: ["yes" if i % 2 else "no" for i in range(n)])),
        Case("label column", "eval file without the label", (LABEL, "eval.parquet"), eval=lambda t: t.drop_columns([LABEL])),
        Case("column types", "continuous column of strings", ("age",), train=_set("age", lambda t: pc.cast(t["age"], pa.string())),
             smoke=True),
        Case("column types", "continuous column of lists", ("app_price",),
             train=_set("app_price", lambda t: pa.array([[x] for x in t["app_price"].to_pylist()]))),
        Case("column types", "multi-valued column of numbers", ("installed_apps",),
             train=_set("installed_apps", lambda t: pa.array(list(range(t.num_rows)), pa.float64()))),
        Case("column types", "feature column missing", ("device",), train=lambda t: t.drop_columns(["device"])),
        Case("files", "empty train file (0 bytes)", ("train.parquet",), train=lambda t: b"", smoke=True),
        Case("files", "train file of 0 rows", ("train.parquet",), train=lambda t: t.slice(0, 0)),
        Case("files", "not a Parquet file", ("train.parquet",), train=lambda t: b"country,age\nus,3\n"),
        Case("files", "train file missing", ("train.parquet",), train=lambda t: None, smoke=True),
        Case("files", "eval file missing", ("eval.parquet",), eval=lambda t: None),
        Case("config keys", "unknown key in [train]", ("turbo",), config=_replace("seed = 0", "seed = 0\nturbo = 1"), smoke=True),
        Case("config keys", "misspelt key batchsize", ("batchsize",), config=_replace("batch_size =", "batchsize ="), smoke=True),
        Case("config keys", "misspelt section [modle]", ("modle",), config=_replace("[model]", "[modle]")),
        Case("config keys", "bad optimizer key", ("learning_rate",),
             config=lambda c: c + 'deep_optimizer = { name = "adagrad", learning_rate = 0.05 }\n', smoke=True),
        Case("config keys", "unknown optimizer", ("adamm",), config=lambda c: c + 'deep_optimizer = { name = "adamm" }\n'),
        Case("config keys", "model uses an undeclared feature", ("colour",), config=_replace('"app_price"]', '"colour"]')),
        Case("config keys", "batch_size = -1", ("batch_size",), config=_replace("batch_size = 128", "batch_size = -1")),
        Case("config keys", "batch_size a string", ("batch_size",), config=_replace("batch_size = 128", 'batch_size = "128"')),
        Case("config keys", "TOML syntax error", ("config.toml",), config=lambda c: c + "epochs = = 2\n"),
    ]  # fmt: skip


def _write(path: Path, content: pa.Table | bytes | None) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        pq.write_table(content, path)


def check(case: Case, folder: Path, train: pa.Table, eval: pa.Table) -> str:
    """Run one case; '' when it is refused as it should be, else what went wrong."""
    folder.mkdir(parents=True)
    _write(folder / "train.parquet", case.train(train))
    _write(folder / "eval.parquet", case.eval(eval))
    (folder / "config.toml").write_text(case.config(config_text("train.parquet", "eval.parquet", epochs=1)))
    r = run_cli(["train", "config.toml"], folder, timeout=300)
    (folder / "train.log").write_text(r.stdout + r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("widedeep train: error:")]
    problems = []
    if r.returncode == 0:
        problems.append("trained without an error")
    if "Traceback" in r.stderr:
        problems.append("printed a traceback")
    if len(errors) != 1 or last_line(r.stderr) != errors[0]:
        problems.append(f"no one-line error at the end (last line: {last_line(r.stderr)!r})")
    elif missing := [n for n in case.names if n not in errors[0]]:
        problems.append(f"the error does not name {missing}: {errors[0]!r}")
    if (folder / "run" / "model").exists():
        problems.append("left a model directory")
    if left := temp_leftovers(folder):
        problems.append(f"left temporary names {left[:3]}")
    return "; ".join(problems)


def run_area(root: Path, train_file: Path, eval_file: Path, jobs: int, smoke: bool = False) -> Area:
    """Every case (`smoke`: a few of each kind) as its own `widedeep train` process, `jobs` at a time; one row per kind."""
    import shutil

    t0 = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    train, eval = pq.read_table(train_file).slice(0, 1000), pq.read_table(eval_file).slice(0, 300)
    all_cases = [c for c in cases() if c.smoke or not smoke]
    with ThreadPoolExecutor(max(jobs, 1)) as pool:
        results = list(pool.map(lambda ic: check(ic[1], root / f"case-{ic[0]:02d}", train, eval), enumerate(all_cases)))
    rows: dict[str, Row] = {}
    for case, problem in zip(all_cases, results):
        row = rows.setdefault(case.row, Row(case.row))
        row.tried += 1
        if problem:
            row.failed += 1
            row.note(f"{case.name}: {problem[:400]}")
    return Area("area 3: bad data and configs through `widedeep train`", list(rows.values()), time.monotonic() - t0)
