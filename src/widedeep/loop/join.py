"""The label join: one labelled row per impression, its label 1 when a positive event for it arrived within the window.

The rules, in the order the SQL applies them:
- Events are read once each: the same (request_id, index, type, time) reported twice counts once.
- An impression is positive when an event of the positive type for its (request_id, index) has
  ``impression.time <= event.time <= impression.time + window``. An event without a time (the client sent none and no
  server stamped it) counts as arriving at once, inside the window. An event stamped before its impression does not count.
- An impression younger than the window, i.e. later than the newest time in either log minus the window, may still turn
  positive: it is left out unless `include_immature`. The newest logged time (not the clock) is the reference, so the
  same logs always give the same output.
- Events whose request_id no impression has, or whose index that request did not show, match nothing; they are counted.

One SQL text (`SQL`) serves DuckDB and Spark: identifiers are double-quoted (Spark runs with ANSI double-quoted
identifiers), times are compared as epoch microseconds through Spark's `unix_micros` (a DuckDB macro over `epoch_us`),
and the engine code (`widedeep.loop.engines`) only registers the Parquet inputs and runs the statements. Event logs in
CSV are converted to Parquet first by one parser, so both engines read the same values.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from widedeep.atomic import publish_file, remove_stale, temp_path
from widedeep.config import Config
from widedeep.features import io
from widedeep.serve.log_schema import EVENT_SCHEMA, labelled_schema

ENGINES = ("duckdb", "spark")

# Statements, each ending with ';' at the end of a line: the views (CREATE), the labelled query, then one-row count
# queries. The engine registers the logs as wd_impressions_in and wd_events_in; {columns}, {label}, {positive},
# {window_us} and {include_immature} are filled in.
SQL = """
-- Each event once: the same outcome reported twice counts once. wd_t_us: epoch microseconds (null stays null).
CREATE OR REPLACE TEMPORARY VIEW wd_events AS
SELECT DISTINCT "request_id", "index", "type", unix_micros("time") AS wd_t_us
FROM wd_events_in;

-- The newest time in either log: "younger than the window" is measured from it, so a rerun gives the same rows.
CREATE OR REPLACE TEMPORARY VIEW wd_newest AS
SELECT MAX(wd_t_us) AS wd_newest_us FROM (
  SELECT MAX(unix_micros("time")) AS wd_t_us FROM wd_impressions_in
  UNION ALL
  SELECT MAX(wd_t_us) AS wd_t_us FROM wd_events
) AS t;

CREATE OR REPLACE TEMPORARY VIEW wd_impressions AS
SELECT {columns}, unix_micros(i."time") AS wd_t_us, unix_micros(i."time") > n.wd_newest_us - {window_us} AS wd_immature
FROM wd_impressions_in AS i CROSS JOIN wd_newest AS n;

-- Impressions a positive event reached within the window (an event without a time counts as arriving at once).
CREATE OR REPLACE TEMPORARY VIEW wd_hits AS
SELECT DISTINCT i."request_id" AS wd_hit_request, i."index" AS wd_hit_index, i.wd_t_us AS wd_hit_t_us
FROM wd_impressions AS i JOIN wd_events AS e ON e."request_id" = i."request_id" AND e."index" = i."index"
WHERE e."type" = '{positive}'
  AND (e.wd_t_us IS NULL OR (e.wd_t_us >= i.wd_t_us AND e.wd_t_us <= i.wd_t_us + {window_us}));

-- The labelled rows, oldest first.
SELECT {columns}, CAST(CASE WHEN wd_hit_t_us IS NULL THEN 0 ELSE 1 END AS TINYINT) AS {label}
FROM wd_impressions AS i LEFT JOIN wd_hits AS h
  ON h.wd_hit_request = i."request_id" AND h.wd_hit_index = i."index" AND h.wd_hit_t_us = i.wd_t_us
WHERE {include_immature} OR NOT i.wd_immature
ORDER BY i.wd_t_us, i."request_id", i."index";

-- What was read and left out. The counts are single passes, run one after another, so that each can spill.
SELECT COUNT(*) AS impressions, COALESCE(SUM(CASE WHEN wd_immature THEN 1 ELSE 0 END), 0) AS immature
FROM wd_impressions;

SELECT
  (SELECT COUNT(*) FROM wd_events_in) AS events,
  (SELECT COUNT(*) FROM wd_events) AS distinct_events,
  (SELECT wd_newest_us FROM wd_newest) AS newest_us;

-- Events that match no impression: an unknown request_id, or an index its request did not show.
WITH wd_keys AS (
  SELECT "request_id", "index", 1 AS wd_shown, 0 AS wd_events FROM wd_impressions_in
  UNION ALL
  SELECT "request_id", "index", 0 AS wd_shown, 1 AS wd_events FROM wd_events
), wd_per_key AS (
  SELECT "request_id", MAX(wd_shown) AS wd_shown, SUM(wd_events) AS wd_events
  FROM wd_keys GROUP BY "request_id", "index"
), wd_per_request AS (
  SELECT MAX(wd_shown) AS wd_request_shown, SUM(wd_events) AS wd_events,
    SUM(CASE WHEN wd_shown = 0 THEN wd_events ELSE 0 END) AS wd_unshown
  FROM wd_per_key GROUP BY "request_id"
)
SELECT
  COALESCE(SUM(CASE WHEN wd_request_shown = 0 THEN wd_events ELSE 0 END), 0) AS unknown_request,
  COALESCE(SUM(CASE WHEN wd_request_shown = 1 THEN wd_unshown ELSE 0 END), 0) AS index_not_shown
FROM wd_per_request
"""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_WINDOW = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_window(text: str) -> timedelta:
    """'24h', '30m', '2d', '1h30m', '90s' -> a positive timedelta; anything else is an error that quotes it."""
    s = str(text).strip().lower()
    parts = _WINDOW.findall(s)
    if not s or "".join(n + u for n, u in parts) != s:
        raise ValueError(f"--window {text!r}: expected a duration such as 24h, 30m, 2d, 1h30m or 90s (units s, m, h, d, w)")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    window = timedelta(seconds=seconds)
    if window < timedelta(microseconds=1):
        raise ValueError(f"--window {text!r}: the window must be longer than zero")
    return window


@dataclass(frozen=True)
class JoinStats:
    """What one join read, wrote and left out."""

    out: Path
    rows: int  # impressions written
    positives: int  # of which labelled 1
    impressions: int  # impressions read
    immature: int  # younger than the window (left out unless include_immature)
    include_immature: bool
    events: int  # event rows read
    distinct_events: int  # after duplicates counted once
    unknown_request: int  # events whose request_id no impression has
    index_not_shown: int  # events for a request that did not show that index
    newest: datetime | None  # the newest time in either log
    window: timedelta

    def to_text(self) -> str:
        rate = f" ({self.positives / self.rows:.2%})" if self.rows else ""
        cutoff = f"newer than {(self.newest - self.window).isoformat()}" if self.newest else "none"
        immature = "kept, their labels may still turn 1" if self.include_immature else "left out"
        return "\n".join([
            f"wrote {self.out}: {self.rows} impressions, {self.positives} positive{rate}",
            f"impressions read: {self.impressions}; younger than the window ({cutoff}): {self.immature}, {immature}",
            f"events read: {self.events}; duplicates counted once: {self.events - self.distinct_events}",
            f"events matching no impression: {self.unknown_request + self.index_not_shown} "
            f"({self.unknown_request} unknown request_id, {self.index_not_shown} index not shown)",
        ])  # fmt: skip


def join(
    cfg: Config,
    impressions: str | Sequence[str],
    events: str | Sequence[str],
    out: Path | str,
    *,
    window: str | timedelta = "24h",
    positive: str = "install",
    include_immature: bool = False,
    engine: str = "duckdb",
    memory_limit: str | None = None,
    root: Path | None = None,
) -> JoinStats:
    """Label the impression log with the event log and write `out` (Parquet, `labelled_schema(cfg)`), atomically.

    `impressions` and `events` are files, globs or folders (or lists of them) relative to `root` (default: the current
    folder): impressions in Parquet, events in Parquet or CSV. `memory_limit` caps DuckDB's memory (e.g. "4GB");
    beyond it DuckDB spills to a temporary folder beside `out`.
    """
    from widedeep.loop.engines import open_engine

    if engine not in ENGINES:
        raise ValueError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if memory_limit and engine != "duckdb":
        raise ValueError("--memory-limit is for the duckdb engine: size Spark with its own settings (spark.driver.memory, ...)")
    span = window if isinstance(window, timedelta) else parse_window(window)
    if span <= timedelta(0):
        raise ValueError(f"window {span}: the window must be longer than zero")
    if not positive or any(ch in positive for ch in "'\\"):
        raise ValueError(f"--positive {positive!r}: an event type must be non-empty, without quotes or backslashes")
    root = Path.cwd() if root is None else Path(root)
    out = Path(out)
    schema = labelled_schema(cfg)
    imp_files = _impression_files(impressions, root, schema)
    work = temp_path(out)  # spill space, converted CSV events, Spark's part files; removed at the end
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent)
    work.mkdir()
    try:
        ev_files = _event_files(events, root, work / "events")
        views, labelled, counts = _statements(cfg, schema, positive, span, include_immature)
        with open_engine(engine, work, memory_limit=memory_limit) as eng:
            eng.register("wd_impressions_in", imp_files)
            eng.register("wd_events_in", ev_files)
            for statement in views:
                eng.execute(statement)
            rows, positives = _write(eng.write(labelled, work / "result"), schema, out)
            c = {k: v for query in counts for k, v in eng.row(query).items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    newest = None if c["newest_us"] is None else epoch + timedelta(microseconds=c["newest_us"])
    return JoinStats(
        out=out, rows=rows, positives=positives, impressions=c["impressions"], immature=c["immature"],
        include_immature=include_immature, events=c["events"], distinct_events=c["distinct_events"],
        unknown_request=c["unknown_request"], index_not_shown=c["index_not_shown"], newest=newest, window=span,
    )  # fmt: skip


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _statements(
    cfg: Config, schema: pa.Schema, positive: str, window: timedelta, include_immature: bool
) -> tuple[list[str], str, list[str]]:
    """The SQL text filled in for this config, split into (views, the labelled query, the count queries)."""
    columns = schema.names[:-1]
    reserved = [c for c in [*columns, cfg.data.label] if c.lower().startswith("wd_")]
    if reserved:
        raise ValueError(f"column {reserved[0]!r}: names starting with 'wd_' are reserved for the join's own columns")
    if cfg.data.label in columns:
        raise ValueError(f"[data] label {cfg.data.label!r} is also an impression-log column")
    text = SQL.format(
        columns=", ".join("i." + _quote(c) for c in columns),
        label=_quote(cfg.data.label),
        positive=positive,
        window_us=window // timedelta(microseconds=1),
        include_immature="TRUE" if include_immature else "FALSE",
    )
    statements = [s.strip() for s in re.split(r";[ \t]*$", text, flags=re.M) if s.strip()]
    code = [re.sub(r"^(--[^\n]*\n)+", "", s) for s in statements]  # without the leading comments
    views = [s for s, c in zip(statements, code) if c.startswith("CREATE ")]
    labelled, *counts = [s for s, c in zip(statements, code) if not c.startswith("CREATE ")]
    return views, labelled, counts


def _accepts(expected: pa.DataType, actual: pa.DataType) -> bool:
    """Whether a logged column of type `actual` reads as `expected` in both engines (the output is cast exactly)."""
    if pa.types.is_dictionary(actual):
        actual = actual.value_type
    if pa.types.is_timestamp(expected):  # any time zone names an instant; Spark cannot read nanoseconds
        return pa.types.is_timestamp(actual) and actual.tz is not None and actual.unit != "ns"
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_list(expected):
        is_list = pa.types.is_list(actual) or pa.types.is_large_list(actual)
        return is_list and _accepts(expected.value_type, actual.value_type)
    return actual == expected


def _check_columns(path: Path, actual: pa.Schema, expected: Iterable[pa.Field], what: str) -> None:
    for field in expected:
        if field.name not in actual.names:
            raise ValueError(f"{path}: {what} has no column {field.name!r} (columns: {actual.names})")
        got = actual.field(field.name).type
        if not _accepts(field.type, got):
            hint = " with a time zone (UTC), in microseconds" if pa.types.is_timestamp(field.type) else ""
            raise ValueError(f"{path}: {what} column {field.name!r} is {got}, expected {field.type}{hint}")


def _impression_files(spec: str | Sequence[str], root: Path, schema: pa.Schema) -> list[Path]:
    files = io.resolve_paths(spec, root, named_by="--impressions")
    for path in files:
        if io.file_format(path) != "parquet":
            raise ValueError(f"{path}: the impression log is Parquet (impression_schema), not {io.file_format(path)}")
        _check_columns(path, io.schema(path), list(schema)[:-1], "impression log")
    return files


def _event_files(spec: str | Sequence[str], root: Path, converted: Path) -> list[Path]:
    """The event log's Parquet files, with each CSV file converted to Parquet (one parser for both engines)."""
    files = io.resolve_paths(spec, root, named_by="--events")
    out = []
    for n, path in enumerate(files):
        if io.file_format(path) == "csv":
            out.append(_csv_to_parquet(path, converted / f"{n:06d}.parquet"))
        else:
            _check_columns(path, io.schema(path), EVENT_SCHEMA, "event log")
            out.append(path)
    return out


def _csv_to_parquet(path: Path, target: Path) -> Path:
    """Stream one CSV event file into Parquet with EVENT_SCHEMA; `time` is ISO-8601 with a zone (Z), empty for none."""
    names = io.schema(path).names
    missing = [n for n in EVENT_SCHEMA.names if n not in names]
    if missing:
        raise ValueError(f"{path}: event log has no column {missing[0]!r} (columns: {names})")
    types = {f.name: f.type for f in EVENT_SCHEMA}
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with pq.ParquetWriter(target, EVENT_SCHEMA) as w:
            for batch in io.iter_batches([path], columns=EVENT_SCHEMA.names, types=types):
                w.write_table(pa.Table.from_batches([batch]).select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA))
    except ValueError as e:  # "In CSV column #3: ..." -> the column's name
        m = re.search(r"CSV column #(\d+): (.*)", str(e), re.S)
        if not m or int(m[1]) >= len(names):
            raise
        detail = m[2].split(". If these timestamps")[0]  # pyarrow's advice is for its own API
        hint = " (times are ISO-8601 with a zone, e.g. 2024-05-01T12:00:00Z)" if "zone offset" in detail else ""
        raise ValueError(f"{path}: event log column {names[int(m[1])]!r}: {detail}{hint}") from None
    return target


def _write(parts: list[Path], schema: pa.Schema, out: Path) -> tuple[int, int]:
    """Stream the engine's result files into `out` with exactly `schema`; returns (rows, positives)."""
    rows = positives = 0
    label = schema.names[-1]
    with publish_file(out) as tmp:
        with pq.ParquetWriter(tmp, schema) as w:
            for batch in (b for part in parts for b in pq.ParquetFile(part).iter_batches(batch_size=1 << 16)):
                table = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
                w.write_table(table)
                rows += table.num_rows
                positives += pc.sum(table.column(label)).as_py() or 0
    return rows, positives
