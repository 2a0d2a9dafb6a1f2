"""The label join: exact labels on a handcrafted log (DuckDB), Spark's output equal to DuckDB's, the output trains,
and bad input names its file and column."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY_CONFIG, make_log

from widedeep.cli import main
from widedeep.config import load
from widedeep.loop.join import join, parse_window
from widedeep.serve.log_schema import EVENT_SCHEMA, impression_schema, labelled_schema

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
H = timedelta(hours=1)
CONFIG = TINY_CONFIG.replace('train = "train.parquet"\neval = "eval.parquet"', 'train = "joined.parquet"')


@pytest.fixture
def cfg(tmp_path: Path):
    (tmp_path / "config.toml").write_text(CONFIG)
    return load(tmp_path / "config.toml")


def impressions_table(cfg, keys: list[tuple[str, int, datetime]], seed: int = 0) -> pa.Table:
    """Impressions with these (request_id, index, time) and varied features of every kind."""
    rng = np.random.default_rng(seed)
    n = len(keys)
    return pa.table(
        {
            "request_id": [k[0] for k in keys],
            "time": [k[2] for k in keys],
            "model_version": ["v1"] * n,
            "arm": ["control" if i % 2 else "treatment" for i in range(n)],
            "position": list(range(n)),
            "index": [k[1] for k in keys],
            "score": rng.random(n).astype(np.float32),
            "country": [["us", "de", None][i % 3] for i in range(n)],
            "installed_apps": [[f"app{j}" for j in range(i % 3)] for i in range(n)],
            "impression_app": [f"app{i}" for i in range(n)],
            "user_id": [str(i * 7) for i in range(n)],
            "age": [None if i == 1 else 20.0 + i for i in range(n)],
            "price": [float(i) / 2 for i in range(n)],
        },
        schema=impression_schema(cfg.features),
    )


def events_table(rows: list[tuple[str, int, str, datetime | None]]) -> pa.Table:
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(EVENT_SCHEMA.names)}, schema=EVENT_SCHEMA)


IMPRESSIONS = [
    ("r1", 0, T0),  # install 1 h later: positive
    ("r1", 1, T0),  # install 25 h later: outside the window
    ("r1", 2, T0),  # install exactly 24 h later: inside (the window's end is included)
    ("r2", 0, T0 + H),  # the same install reported twice: positive, once
    ("r2", 1, T0 + H),  # a click, not an install
    ("r2", 3, T0 + H),  # an install stamped before the impression
    ("r3", 0, T0 + 2 * H),  # an install without a time: counts as arriving at once
    ("r4", 0, T0 + 50 * H),  # younger than the window: newest log time is T0 + 60 h, so the cut-off is T0 + 36 h
]
EVENTS = [
    ("r1", 0, "install", T0 + H),
    ("r1", 1, "install", T0 + 25 * H),
    ("r1", 2, "install", T0 + 24 * H),
    ("r2", 0, "install", T0 + 2 * H),
    ("r2", 0, "install", T0 + 2 * H),
    ("r2", 1, "click", T0 + 2 * H),
    ("r2", 3, "install", T0),
    ("r3", 0, "install", None),
    ("r4", 0, "install", T0 + 60 * H),
    ("r9", 0, "install", T0 + 3 * H),  # unknown request
    ("r1", 7, "install", T0 + 3 * H),  # an index r1 did not show
]
LABELS = {("r1", 0): 1, ("r1", 1): 0, ("r1", 2): 1, ("r2", 0): 1, ("r2", 1): 0, ("r2", 3): 0, ("r3", 0): 1}


@pytest.fixture
def logs(tmp_path: Path, cfg) -> tuple[Path, Path]:
    """Impressions split over two files and events over two files, in folders."""
    imp, ev = tmp_path / "impressions", tmp_path / "events"
    imp.mkdir()
    ev.mkdir()
    table = impressions_table(cfg, IMPRESSIONS)
    pq.write_table(table.slice(0, 5), imp / "part-0.parquet")
    pq.write_table(table.slice(5), imp / "part-1.parquet")
    pq.write_table(events_table(EVENTS[:4]), ev / "a.parquet")
    pq.write_table(events_table(EVENTS[4:]), ev / "b.parquet")
    return imp, ev


def test_labels_on_a_handcrafted_log(tmp_path: Path, cfg, logs) -> None:
    imp, ev = logs
    stats = join(cfg, str(imp), str(ev), tmp_path / "out" / "joined.parquet", window="24h")
    out = pq.read_table(tmp_path / "out" / "joined.parquet")
    assert out.schema == labelled_schema(cfg)
    got = {(r, i): y for r, i, y in zip(*(out.column(c).to_pylist() for c in ("request_id", "index", "installed")))}
    assert got == LABELS
    assert out.column("request_id").to_pylist() == ["r1", "r1", "r1", "r2", "r2", "r2", "r3"]  # time order
    # the logged features come through unchanged
    src = impressions_table(cfg, IMPRESSIONS).slice(0, 7)
    for name in ("country", "installed_apps", "user_id", "age", "price", "time", "arm", "position"):
        assert out.column(name).to_pylist() == src.column(name).to_pylist(), name
    assert (stats.rows, stats.positives, stats.impressions, stats.immature) == (7, 4, 8, 1)
    assert (stats.events, stats.distinct_events, stats.unknown_request, stats.index_not_shown) == (11, 10, 1, 1)
    assert stats.newest == T0 + 60 * H
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file or spill folder left behind
    text = stats.to_text()
    assert "2 (1 unknown request_id, 1 index not shown)" in text and "duplicates counted once: 1" in text


def test_immature_included_and_a_shorter_window(tmp_path: Path, cfg, logs) -> None:
    imp, ev = logs
    stats = join(cfg, str(imp), str(ev), tmp_path / "all.parquet", window="24h", include_immature=True)
    out = pq.read_table(tmp_path / "all.parquet")
    assert stats.rows == 8 and stats.immature == 1
    assert out.column("request_id").to_pylist()[-1] == "r4" and out.column("installed").to_pylist()[-1] == 1
    # 90 minutes: r1/2's install at +24 h is late, and r4 is mature (cut-off T0 + 58.5 h) with its install 10 h late
    join(cfg, str(imp), str(ev), tmp_path / "short.parquet", window="90m")
    out = pq.read_table(tmp_path / "short.parquet")
    assert out.column("installed").to_pylist() == [1, 0, 0, 1, 0, 0, 1, 0]
    join(cfg, str(imp), str(ev), tmp_path / "clicks.parquet", window="24h", positive="click")
    assert pq.read_table(tmp_path / "clicks.parquet").column("installed").to_pylist() == [0, 0, 0, 0, 1, 0, 0]


def test_csv_events_join_like_parquet(tmp_path: Path, cfg, logs) -> None:
    imp, ev = logs
    csv_dir = tmp_path / "csv_events"
    csv_dir.mkdir()
    lines = ["request_id,index,type,time"]
    lines += [f"{r},{i},{t},{'' if s is None else s.isoformat().replace('+00:00', 'Z')}" for r, i, t, s in EVENTS]
    (csv_dir / "events.csv").write_text("\n".join(lines) + "\n")
    join(cfg, str(imp), str(ev), tmp_path / "from_parquet.parquet", window="1d")
    stats = join(cfg, str(imp), str(csv_dir), tmp_path / "from_csv.parquet", window="1d")
    assert pq.read_table(tmp_path / "from_csv.parquet").equals(pq.read_table(tmp_path / "from_parquet.parquet"))
    assert stats.distinct_events == 10


def test_joined_output_trains(tmp_path: Path, cfg) -> None:
    """A simulated day: the impressions of make_log, installs reported for its positives (most within the window)."""
    from widedeep.artifact import Model
    from widedeep.train.loop import train

    log = make_log(800, seed=3)
    rng = np.random.default_rng(0)
    n = log.num_rows
    times = [T0 + timedelta(seconds=int(s)) for s in rng.integers(0, 3600, n)]
    keys = [(f"q{i // 10}", i % 10, t) for i, t in enumerate(times)]
    table = impressions_table(cfg, keys)
    for name in ("country", "installed_apps", "impression_app", "age", "price"):
        table = table.set_column(table.schema.get_field_index(name), name, log.column(name))
    table = table.set_column(table.schema.get_field_index("user_id"), "user_id", log.column("user_id").cast(pa.string()))
    installed = np.asarray(log.column("installed"))
    delay = rng.integers(0, 30 * 3600, n)  # seconds; past 24 h the install comes too late
    events = [(k[0], k[1], "install", k[2] + timedelta(seconds=int(d))) for k, y, d in zip(keys, installed, delay) if y]
    events.append(("late", 0, "install", T0 + 48 * H))  # makes every impression mature
    pq.write_table(table, tmp_path / "impressions.parquet")
    pq.write_table(events_table(events), tmp_path / "events.parquet")
    stats = join(cfg, "impressions.parquet", "events.parquet", tmp_path / "joined.parquet", window="24h", root=tmp_path)
    expected = installed.astype(bool) & (delay <= 24 * 3600)
    assert stats.rows == n and stats.positives == int(expected.sum()) and stats.unknown_request == 1
    joined = pq.read_table(tmp_path / "joined.parquet")
    columns = [joined.column(c).to_pylist() for c in ("request_id", "index", "installed")]
    by_key = {(r, i): y for r, i, y in zip(*columns)}
    assert [by_key[k[:2]] for k in keys] == expected.astype(int).tolist()
    model = train(cfg, progress=False)
    metrics = Model.load(model).evaluate(str(tmp_path / "joined.parquet"))
    assert np.isfinite(metrics["logloss"])


def test_cli_join(tmp_path: Path, cfg, logs, capsys) -> None:
    imp, ev = logs
    argv = ["join", "--impressions", str(imp), "--events", str(ev), "--window", "24h"]
    argv += ["--memory-limit", "200MB", "--config", str(tmp_path / "config.toml"), "--out", str(tmp_path / "cli.parquet")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "7 impressions, 4 positive" in printed and "unknown request_id" in printed
    assert pq.read_table(tmp_path / "cli.parquet").num_rows == 7
    assert main([*argv[:-1], str(tmp_path / "bad.parquet"), "--window", "0"]) == 2
    assert "--window '0'" in capsys.readouterr().err
    assert not (tmp_path / "bad.parquet").exists()


@pytest.mark.parametrize("window", ["0", "0h", "-1h", "abc", "24", "1h-5m", ""])
def test_bad_windows(window: str) -> None:
    with pytest.raises(ValueError, match="--window"):
        parse_window(window)


def test_windows() -> None:
    assert parse_window("24h") == parse_window("1d") == timedelta(days=1)
    assert parse_window("1h30m") == timedelta(minutes=90) and parse_window("90s") == timedelta(seconds=90)


def test_bad_input_names_file_and_column(tmp_path: Path, cfg, logs) -> None:
    imp, ev = logs
    out = tmp_path / "out.parquet"
    bad = tmp_path / "bad_imp"
    bad.mkdir()
    table = impressions_table(cfg, IMPRESSIONS)
    pq.write_table(table.drop_columns(["country"]), bad / "x.parquet")
    with pytest.raises(ValueError, match=r"bad_imp/x\.parquet: impression log has no column 'country'"):
        join(cfg, str(bad), str(ev), out)
    pq.write_table(table.set_column(5, "index", table.column("index").cast(pa.int64())), bad / "x.parquet")
    with pytest.raises(ValueError, match=r"x\.parquet: impression log column 'index' is int64, expected int32"):
        join(cfg, str(bad), str(ev), out)
    pq.write_table(table.set_column(1, "time", table.column("time").cast(pa.timestamp("us"))), bad / "x.parquet")
    with pytest.raises(ValueError, match=r"x\.parquet: impression log column 'time' is timestamp\[us\], expected"):
        join(cfg, str(bad), str(ev), out)
    (bad / "x.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="--impressions: no data file matches"):
        join(cfg, str(bad), str(ev), out)
    bad_ev = tmp_path / "bad_ev"
    bad_ev.mkdir()
    pq.write_table(events_table(EVENTS).drop_columns(["type"]), bad_ev / "e.parquet")
    with pytest.raises(ValueError, match=r"e\.parquet: event log has no column 'type'"):
        join(cfg, str(imp), str(bad_ev), out)
    (bad_ev / "e.parquet").unlink()
    (bad_ev / "e.csv").write_text("source,time,request_id,index,type\nweb,2024-05-01T01:00:00Z,r1,0,install\nweb,yesterday,r1,1,install\n")
    with pytest.raises(ValueError, match=r"e\.csv: event log column 'time': .*invalid value 'yesterday'"):
        join(cfg, str(imp), str(bad_ev), out)
    (bad_ev / "e.csv").write_text("request_id,index,type,time\nr1,0,install,2024-05-01T01:00:00\n")
    with pytest.raises(ValueError, match=r"e\.csv: event log column 'time': .*expected a zone offset.* \(times are ISO-8601"):
        join(cfg, str(imp), str(bad_ev), out)
    (bad_ev / "e.csv").write_text("request_id,idx,type,time\nr1,0,install,2024-05-01T01:00:00Z\n")
    with pytest.raises(ValueError, match=r"e\.csv: event log has no column 'index'"):
        join(cfg, str(imp), str(bad_ev), out)
    with pytest.raises(ValueError, match="--memory-limit 'lots'"):
        join(cfg, str(imp), str(ev), out, memory_limit="lots")
    with pytest.raises(ValueError, match="--engine 'pandas'"):
        join(cfg, str(imp), str(ev), out, engine="pandas")
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*"))


@pytest.fixture(scope="module")
def spark():
    """One local Spark session for the module. Spark needs Java: without it this fails, it does not skip."""
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("widedeep-test-join")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    yield session
    session.stop()


def test_spark_equals_duckdb(tmp_path: Path, cfg, logs, spark) -> None:
    imp, ev = logs
    a = join(cfg, str(imp), str(ev), tmp_path / "duckdb.parquet", window="24h", engine="duckdb")
    b = join(cfg, str(imp), str(ev), tmp_path / "spark.parquet", window="24h", engine="spark")
    assert b == dataclasses.replace(a, out=b.out)
    duck, sp = pq.read_table(tmp_path / "duckdb.parquet"), pq.read_table(tmp_path / "spark.parquet")
    assert sp.schema == labelled_schema(cfg)
    assert sp.equals(duck), (sp.to_pylist(), duck.to_pylist())
    assert not list(tmp_path.glob(".*"))
    assert not [t for t in spark.catalog.listTables() if t.isTemporary]  # the join's views stay in its own session
