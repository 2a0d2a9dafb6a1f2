"""The two engines the label join runs on. Each only registers Parquet files as views and runs the join's SQL text.

DuckDB (embedded, the default) spills joins and sorts to a folder it is given once `memory_limit` is reached. Spark
runs in the session that is active (`spark-submit`, a notebook) or a local one, through a new session that holds the
join's settings and views apart from the caller's. Spark reads the logs and writes its result by file path, so on a
cluster the inputs and the output's folder must be on a file system its executors share.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

# Spark settings the SQL text relies on: "x" quotes an identifier (needs ANSI mode), times are UTC, and Parquet times are
# written as microseconds (not INT96) so that they read back as timestamp[us, UTC].
SPARK_CONF = {
    "spark.sql.ansi.enabled": "true",
    "spark.sql.ansi.doubleQuotedIdentifiers": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


def _literal(path: Path) -> str:
    return str(path).replace("'", "''")


class Engine(Protocol):
    def register(self, name: str, files: list[Path]) -> None: ...
    def execute(self, statement: str) -> None: ...
    def write(self, query: str, folder: Path) -> list[Path]: ...
    def row(self, query: str) -> dict[str, Any]: ...


class DuckDBEngine:
    def __init__(self, spill: Path, memory_limit: str | None = None):
        try:
            import duckdb
        except ImportError:
            raise ValueError("the duckdb engine needs DuckDB: pip install 'widedeep[join]'") from None
        self.duckdb = duckdb
        self.con = duckdb.connect(config={"temp_directory": str(spill), "preserve_insertion_order": "false"})
        if memory_limit:
            try:
                self.con.execute("SET memory_limit = ?", [memory_limit])
            except duckdb.Error as e:
                raise ValueError(f"--memory-limit {memory_limit!r}: {e}") from None
        self.con.execute("CREATE OR REPLACE TEMPORARY MACRO unix_micros(t) AS epoch_us(t)")  # Spark's name for it

    def register(self, name: str, files: list[Path]) -> None:
        self.con.read_parquet([str(f) for f in files], union_by_name=True).create_view(name)

    def execute(self, statement: str) -> None:
        self.con.execute(statement)

    def write(self, query: str, folder: Path) -> list[Path]:
        """The query's rows in one Parquet file, in its order. COPY spills its sort under memory_limit where a
        streamed result of a sorted query does not."""
        folder.mkdir()
        part = folder / "part-0.parquet"
        try:
            self.con.execute(f"COPY ({query}) TO '{_literal(part)}' (FORMAT parquet)")
        except self.duckdb.OutOfMemoryException as e:
            limit = self.con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
            detail = str(e).splitlines()[0]
            raise ValueError(f"the join ran out of memory at a limit of {limit} (--memory-limit): {detail}") from None
        return [part]

    def row(self, query: str) -> dict[str, Any]:
        cursor = self.con.execute(query)
        return dict(zip([d[0] for d in cursor.description], cursor.fetchone()))

    def close(self) -> None:
        self.con.close()


class SparkEngine:
    def __init__(self):
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise ValueError("the spark engine needs PySpark: pip install 'widedeep[spark]'") from None
        active = SparkSession.getActiveSession()
        if active is None:
            builder = SparkSession.builder.appName("widedeep join").config("spark.ui.showConsoleProgress", "false")
            active = builder.getOrCreate()
        self.spark = active.newSession()  # own settings and temporary views, the caller's SparkContext
        for key, value in SPARK_CONF.items():
            self.spark.conf.set(key, value)

    def register(self, name: str, files: list[Path]) -> None:
        self.spark.read.parquet(*[str(f) for f in files]).createOrReplaceTempView(name)

    def execute(self, statement: str) -> None:
        self.spark.sql(statement)

    def write(self, query: str, folder: Path) -> list[Path]:
        """The query's rows in Parquet part files; a sorted result keeps its order across them, in name order."""
        self.spark.sql(query).write.parquet(str(folder))
        return sorted(folder.glob("part-*.parquet"))

    def row(self, query: str) -> dict[str, Any]:
        return self.spark.sql(query).collect()[0].asDict()

    def close(self) -> None:
        for table in self.spark.catalog.listTables():
            if table.isTemporary:
                self.spark.catalog.dropTempView(table.name)


@contextmanager
def open_engine(name: str, work: Path, memory_limit: str | None = None) -> Iterator[Engine]:
    """An engine whose scratch files go under `work` (a folder the caller removes)."""
    engine = DuckDBEngine(work / "spill", memory_limit) if name == "duckdb" else SparkEngine()
    try:
        yield engine
    finally:
        engine.close()
