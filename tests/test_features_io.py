"""Reading data: files, globs, directories, Parquet and CSV; errors that name the pattern or the file."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from widedeep.features.io import count_rows, iter_batches, read_table, resolve_paths


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    (tmp_path / "d").mkdir()
    for i in range(3):
        pq.write_table(pa.table({"a": [i, i], "b": ["x", "007"]}), tmp_path / "d" / f"part-{i}.parquet")
    (tmp_path / "d" / "_SUCCESS").write_text("")
    pcsv.write_csv(pa.table({"a": [7], "b": ["007"]}), tmp_path / "one.csv")
    return tmp_path


def test_resolve_file_glob_directory_and_list(data: Path) -> None:
    parts = [data / "d" / f"part-{i}.parquet" for i in range(3)]
    assert resolve_paths("d", data) == parts  # hidden and marker files are skipped
    assert resolve_paths("d/part-[12].parquet", data) == parts[1:]
    assert resolve_paths(["one.csv", "d/*.parquet", "d"], data) == [data / "one.csv", *parts]
    assert resolve_paths(str(data / "one.csv"), Path("/elsewhere")) == [data / "one.csv"]


def test_resolve_errors_name_the_pattern(data: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no data file matches 'd/\*\.csv'"):
        resolve_paths("d/*.csv", data)
    (data / "x.json").write_text("{}")
    with pytest.raises(ValueError, match=r"x\.json: unknown data format"):
        resolve_paths("x.json", data)


def test_batches_and_tables(data: Path) -> None:
    paths = resolve_paths(["d", "one.csv"], data)
    batches = list(iter_batches(paths, columns=["a", "b"], batch_rows=1, types={"b": pa.string()}))
    assert sum(b.num_rows for b in batches) == 7 and max(b.num_rows for b in batches) == 1
    t = read_table(paths[-1:], columns=["b"])
    assert t.column("b").type == pa.int64()  # without types, CSV infers; prepare passes string types for tokens
    assert next(iter_batches(paths[-1:], types={"b": pa.string()})).column("b").to_pylist() == ["007"]
    assert [count_rows(p) for p in paths] == [2, 2, 2, 1]
    d = next(iter_batches(paths[:1], dictionary=True)).column("b")
    assert pa.types.is_dictionary(d.type) and d.to_pylist() == ["x", "007"]


def test_unreadable_and_missing_columns_name_the_file(data: Path) -> None:
    (data / "bad.parquet").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"bad\.parquet: cannot read"):
        list(iter_batches([data / "bad.parquet"]))
    with pytest.raises(ValueError, match=r"part-0\.parquet: missing column 'zzz'"):
        list(iter_batches([data / "d" / "part-0.parquet"], columns=["zzz"]))
