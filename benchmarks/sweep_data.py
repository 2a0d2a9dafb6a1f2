"""The data sets of the accuracy sweeps (bf16 cost, defaults): each one Parquet data plus a TOML config, in one folder.

    appstore           the app-store simulator (`widedeep.datasets.app_store`) with examples/appstore.toml
    adult              UCI Adult (shipped, stratified 80/20 split) with examples/adult.toml, the tuned example
    adult_plain        the same data with a config as a user first writes it: strings categorical, numbers continuous,
                       the tutorial's three crosses, every model and optimizer setting at its default
    criteo_like_small  the Criteo-like generator (`widedeep.datasets.criteo_like`) at the paper configuration:
    criteo_like_large  26 categorical x 32-d embeddings + 13 continuous, MLP 1024-512-256, batch 1024, 1 epoch

Everything is generated or shipped with widedeep: nothing is downloaded. Layout of the folder:

    data/<source>-<rows>/...   Parquet files, published whole (a folder that exists is complete, and is reused)
    <name>.toml                the configs; relative paths, prepared shards in prepared/<name>, models in runs/<name>

    python benchmarks/sweep_data.py                      # default sizes into runs/sweep_data
    python benchmarks/sweep_data.py --smoke              # a few thousand rows each, into runs/sweep_data_smoke
"""

from __future__ import annotations

import argparse
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("appstore", "adult", "adult_plain", "criteo_like_small", "criteo_like_large")
# (train rows, eval rows); 0 = all of Adult's split (39,074 / 9,768 rows).
SIZES = {
    "appstore": (100_000, 50_000),
    "adult": (0, 0),
    "adult_plain": (0, 0),
    "criteo_like_small": (50_000, 50_000),
    "criteo_like_large": (200_000, 50_000),
}
SMOKE_SIZES = {
    "appstore": (2_000, 1_000),
    "adult": (2_000, 500),
    "adult_plain": (2_000, 500),
    "criteo_like_small": (2_000, 1_000),
    "criteo_like_large": (4_000, 1_000),
}
PAPER = {"embedding_dim": 32, "hidden": "[1024, 512, 256]", "batch_size": 1024}  # the paper's deep part, 1 epoch


@dataclass(frozen=True)
class DataSet:
    """One data set of the sweep: its name, its config file and the rows it trains and evaluates on."""

    name: str
    config: Path
    train_rows: int
    eval_rows: int


def build(folder: Path | str, smoke: bool = False, names: tuple[str, ...] = NAMES) -> list[DataSet]:
    """Write (or reuse) the data of `names` and their configs under `folder`; returns them in the order asked."""
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown data set(s) {unknown}; known: {list(NAMES)}")
    folder = Path(folder).resolve()
    sizes = SMOKE_SIZES if smoke else SIZES
    return [_BUILDERS[name](folder, name, *sizes[name]) for name in names]


# ----------------------------------------------------------------------------------------------------------------------
# Data: each source folder is generated once, atomically


def _source(folder: Path, key: str, write: Callable[[Path], None]) -> Path:
    """`folder/data/<key>`, written by `write(tmp)` into a temporary folder published whole, unless it exists."""
    from widedeep.atomic import publish_dir

    target = folder / "data" / key
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        with publish_dir(target) as tmp:
            write(tmp)
    return target


def _adult_data(folder: Path, train_rows: int, eval_rows: int) -> tuple[Path, int, int]:
    """The stratified 80/20 split (seed 0), or its first rows; returns (its folder, train rows, eval rows)."""
    import pyarrow.parquet as pq

    from widedeep.datasets.adult import adult_split

    def write(tmp: Path) -> None:
        train, test = adult_split(tmp)
        for path, rows in ((train, train_rows), (test, eval_rows)):
            if rows:
                pq.write_table(pq.read_table(path).slice(0, rows), path)

    data = _source(folder, f"adult-{train_rows or 'all'}-{eval_rows or 'all'}", write)
    return data, pq.read_metadata(data / "train.parquet").num_rows, pq.read_metadata(data / "test.parquet").num_rows


# ----------------------------------------------------------------------------------------------------------------------
# The data sets


def _appstore(folder: Path, name: str, train_rows: int, eval_rows: int) -> DataSet:
    from widedeep.datasets.app_store import write_app_store

    data = _source(folder, f"appstore-{train_rows}-{eval_rows}", lambda tmp: write_app_store(tmp, train_rows, eval_rows))
    text = _retarget((ROOT / "examples" / "appstore.toml").read_text(encoding="utf-8"), name, {
        "train": f"{_rel(data, folder)}/train", "eval": f"{_rel(data, folder)}/eval.parquet",
    })  # fmt: skip
    return _write_config(folder, name, text, train_rows, eval_rows)


def _adult(folder: Path, name: str, train_rows: int, eval_rows: int) -> DataSet:
    data, n_train, n_eval = _adult_data(folder, train_rows, eval_rows)
    text = _retarget((ROOT / "examples" / "adult.toml").read_text(encoding="utf-8"), name, {
        "train": f"{_rel(data, folder)}/train.parquet", "eval": f"{_rel(data, folder)}/test.parquet",
    })  # fmt: skip
    return _write_config(folder, name, text, n_train, n_eval)


def _adult_plain(folder: Path, name: str, train_rows: int, eval_rows: int) -> DataSet:
    from widedeep.datasets.adult import CATEGORICAL, LABEL, NUMERIC

    data, n_train, n_eval = _adult_data(folder, train_rows, eval_rows)
    crosses = {  # the original Wide & Deep tutorial's crosses, 1,000 buckets each as there
        "education_x_occupation": ("education", "occupation"),
        "native_country_x_occupation": ("native_country", "occupation"),
        "age_x_education_x_occupation": ("age", "education", "occupation"),
    }
    lines = [
        "# UCI Adult as a user first writes it: strings categorical, numbers continuous (age in 10 quantile buckets,",
        "# for its cross), the tutorial's three crosses; model and optimizers at their defaults.",
        "[data]", f'train = "{_rel(data, folder)}/train.parquet"', f'eval = "{_rel(data, folder)}/test.parquet"',
        f'label = "{LABEL}"', f'prepared = "prepared/{name}"', "",
    ]  # fmt: skip
    for c in CATEGORICAL:
        lines += [f"[features.{c}]", 'type = "categorical"']
    for c in NUMERIC:
        lines += [f"[features.{c}]", 'type = "continuous"'] + (["quantiles = 10"] if c == "age" else [])
    for cross, columns in crosses.items():
        lines += ["", f"[crosses.{cross}]", f"columns = {_toml_list(columns)}", "buckets = 1000"]
    lines += [
        "", "[model]", 'type = "wide_deep"', f"wide = {_toml_list([*CATEGORICAL, *crosses])}",
        f"deep = {_toml_list([*CATEGORICAL, *NUMERIC])}", "", "[train]", "epochs = 3", f'out = "runs/{name}"',
    ]  # fmt: skip
    return _write_config(folder, name, "\n".join(lines) + "\n", n_train, n_eval)


def _criteo_like(folder: Path, name: str, train_rows: int, eval_rows: int) -> DataSet:
    from widedeep.datasets.criteo_like import criteo_like_toml, write_criteo_like

    def write(tmp: Path) -> None:
        write_criteo_like(tmp / "train.parquet", train_rows, seed=0)
        write_criteo_like(tmp / "eval.parquet", eval_rows, seed=1)  # other rows than any training file's

    data = _source(folder, f"criteo_like-{train_rows}-{eval_rows}", write)
    text = criteo_like_toml(f"{_rel(data, folder)}/train.parquet", f"{_rel(data, folder)}/eval.parquet", f"runs/{name}")
    text = _sub(text, r"(?m)^embedding_dim = \d+$", f"embedding_dim = {PAPER['embedding_dim']}", name)
    text = _sub(text, r"(?m)^hidden = \[.*\]$", f"hidden = {PAPER['hidden']}", name)
    text = _sub(text, r"(?m)^batch_size = \d+$", f"batch_size = {PAPER['batch_size']}\nepochs = 1", name)
    text = _sub(text, r"(?m)^\[data\]$", f'[data]\nprepared = "prepared/{name}"', name)
    return _write_config(folder, name, text, train_rows, eval_rows)


_BUILDERS: dict[str, Callable[[Path, str, int, int], DataSet]] = {
    "appstore": _appstore,
    "adult": _adult,
    "adult_plain": _adult_plain,
    "criteo_like_small": _criteo_like,
    "criteo_like_large": _criteo_like,
}


# ----------------------------------------------------------------------------------------------------------------------
# Config text


def _retarget(text: str, name: str, data: dict[str, str]) -> str:
    """An example config with its [data] paths replaced by `data`, its prepared shards in prepared/<name> and its
    models in runs/<name> (the example's own values are found by parsing it, then replaced where they are quoted)."""
    raw = tomllib.loads(text)
    for key, new in data.items():
        text = _sub(text, rf'(?m)^{key} = "{re.escape(raw["data"][key])}"$', f'{key} = "{new}"', name)
    text = _sub(text, rf'(?m)^out = "{re.escape(raw["train"]["out"])}"$', f'out = "runs/{name}"', name)
    return _sub(text, r"(?m)^\[data\]$", f'[data]\nprepared = "prepared/{name}"', name)


def _sub(text: str, pattern: str, new: str, name: str) -> str:
    text, n = re.subn(pattern, new.replace("\\", "\\\\"), text)
    if n != 1:
        raise ValueError(f"{name}: expected the config text to match {pattern!r} exactly once, found {n}")
    return text


def _toml_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(f'"{x}"' for x in items) + "]"


def _rel(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _write_config(folder: Path, name: str, text: str, train_rows: int, eval_rows: int) -> DataSet:
    """Write `folder/<name>.toml` and check that it loads (errors name the file and key)."""
    from widedeep.atomic import write_text_atomic
    from widedeep.config import load

    path = folder / f"{name}.toml"
    write_text_atomic(path, text)
    load(path)
    return DataSet(name, path, train_rows, eval_rows)


def main() -> None:
    from _machine import print_machine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="folder (default runs/sweep_data, or runs/sweep_data_smoke)")
    ap.add_argument("--smoke", action="store_true", help="a few thousand rows per data set")
    ap.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES), help="data sets to build (default: all)")
    args = ap.parse_args()
    out = args.out or ROOT / "runs" / ("sweep_data_smoke" if args.smoke else "sweep_data")
    print_machine()
    print("| data set | train rows | eval rows | config |\n|---|---:|---:|---|")
    for ds in build(out, args.smoke, tuple(args.only)):
        print(f"| {ds.name} | {ds.train_rows:,} | {ds.eval_rows:,} | {ds.config} |", flush=True)


if __name__ == "__main__":
    main()
