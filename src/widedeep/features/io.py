"""Reading training and evaluation data: files, globs or directories of Parquet or CSV, streamed as Arrow batches.

Errors name the pattern or the file: nothing matches, an unknown format, an unreadable or empty file, a missing column.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

BATCH_ROWS = 1 << 18
_PARQUET = (".parquet", ".pq")
_CSV = (".csv", ".csv.gz", ".tsv")


def file_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_PARQUET):
        return "parquet"
    if name.endswith(_CSV):
        return "csv"
    raise ValueError(f"{path}: unknown data format (expected {', '.join(_PARQUET + _CSV)})")


def resolve_paths(spec: str | Sequence[str], root: Path, named_by: str = "") -> list[Path]:
    """Files named by a file, glob or directory (or a list of them), relative to `root`; sorted, without duplicates.
    `named_by` says where the names come from (e.g. "config.toml: [data] eval"), for the error when nothing matches."""
    out: dict[Path, None] = {}
    for item in [spec] if isinstance(spec, str) else spec:
        p = Path(item).expanduser()
        p = p if p.is_absolute() else Path(root) / p
        if any(ch in item for ch in "*?["):
            found = [Path(m) for m in sorted(glob.glob(str(p), recursive=True)) if Path(m).is_file()]
        elif p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith((".", "_")) and _known(q))
        elif p.is_file():
            found = [p]
        else:
            found = []
        if not found:
            raise FileNotFoundError(f"{named_by + ': ' if named_by else ''}no data file matches {item!r} (resolved to {p})")
        for f in found:
            file_format(f)
            out[f] = None
    return list(out)


def _known(p: Path) -> bool:
    return p.name.lower().endswith(_PARQUET + _CSV)


def _csv_options(columns: Sequence[str] | None, types: Mapping[str, pa.DataType] | None, path: Path):
    delimiter = "\t" if path.name.lower().endswith(".tsv") else ","
    return (
        pcsv.ReadOptions(block_size=32 << 20),
        pcsv.ParseOptions(delimiter=delimiter),
        pcsv.ConvertOptions(include_columns=list(columns) if columns else None, column_types=dict(types or {})),
    )


def schema(path: Path) -> pa.Schema:
    """The columns and types of one file (a CSV's first block is parsed to infer them)."""
    try:
        if file_format(path) == "parquet":
            return pq.read_schema(path)
        r, p, _ = _csv_options(None, None, path)
        with pcsv.open_csv(path, read_options=r, parse_options=p) as reader:
            return reader.schema
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: unreadable data file: {e}") from None


def count_rows(path: Path) -> int:
    """Rows in a Parquet file (from its footer); CSV files are counted by reading them."""
    if file_format(path) == "parquet":
        try:
            return pq.ParquetFile(path).metadata.num_rows
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"{path}: unreadable data file: {e}") from None
    return sum(b.num_rows for b in iter_batches([path], columns=[schema(path).names[0]]))


def iter_batches(
    paths: Sequence[Path],
    columns: Sequence[str] | None = None,
    batch_rows: int = BATCH_ROWS,
    types: Mapping[str, pa.DataType] | None = None,
    dictionary: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Stream record batches of `columns` from every file in order. `types` fixes CSV column types (e.g. categorical
    codes stay strings); with `dictionary`, Parquet string columns are read dictionary-encoded (the transform uses
    the dictionary directly, saving a hash pass)."""
    for path in paths:
        try:
            if file_format(path) == "parquet":
                yield from _parquet_batches(path, columns, batch_rows, dictionary)
            else:
                r, p, c = _csv_options(columns, types, path)
                with pcsv.open_csv(path, read_options=r, parse_options=p, convert_options=c) as reader:
                    for batch in reader:
                        if batch.num_rows:
                            yield batch
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"{path}: cannot read: {e}") from None


def _parquet_batches(path: Path, columns, batch_rows: int, dictionary: bool) -> Iterator[pa.RecordBatch]:
    f = pq.ParquetFile(path)
    names = f.schema_arrow.names
    missing = [c for c in columns or () if c not in names]
    if missing:
        raise ValueError(f"{path}: missing column {missing[0]!r} (columns: {names})")
    if dictionary:
        strings = [c for c in columns or names if pa.types.is_string(f.schema_arrow.field(c).type)]
        f = pq.ParquetFile(path, read_dictionary=strings)
    yield from f.iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None)


def read_table(paths: Sequence[Path], columns: Sequence[str] | None = None) -> pa.Table:
    """All rows of the files as one table (for evaluation and prediction on moderate data)."""
    tables = [pa.Table.from_batches([b]) for b in iter_batches(paths, columns)]
    if not tables:
        raise ValueError(f"no rows in {[str(p) for p in paths]}")
    return pa.concat_tables(tables, promote_options="permissive")
