"""Delta tables by name under one lake root (a folder or a URI).

Writes from Spark never pass through the driver: each task writes its Parquet files straight into the table
folder and reports what it wrote; the driver then commits every file as ONE Delta transaction with delta-rs.
A write that dies before that commit leaves files nothing refers to, so every reader keeps seeing the previous
version (`vacuum` removes such leftovers). Where Spark's own Delta writer is loaded (a cluster with the Delta
jars) it is used instead. Every commit records the run id, the stage and the config hash.

Spark and DuckDB are imported where they are used, so the torch stages read and write the lake on GPU nodes
that have neither a JVM nor pyspark.
"""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Schema, write_deltalake
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import AddAction, create_table_with_add_actions

from tslrec.config import NAME_PATTERN
from tslrec.errors import ConcurrentCommit, TslrecError
from tslrec.logs import get_logger

if TYPE_CHECKING:
    import numpy as np
    from pyspark.sql import DataFrame, SparkSession

log = get_logger(__name__)

Mode = Literal["create", "overwrite", "append", "replace_run"]
SparkWriter = Literal["auto", "delta-rs", "spark-delta"]

_FILE_REPORT = pa.schema([
    ("path", pa.string()),
    ("size", pa.int64()),
    ("partition_values", pa.string()),
    ("modification_time", pa.int64()),
    ("stats", pa.string()),
])


@dataclass(frozen=True)
class Commit:
    """Who wrote a version: recorded in the commit so `history` answers which run and settings made it."""

    run_id: str
    stage: str
    config_hash: str

    def metadata(self) -> dict[str, str]:
        return {"tslrec.run_id": self.run_id, "tslrec.stage": self.stage, "tslrec.config_hash": self.config_hash}


@dataclass(frozen=True)
class BasedOn:
    """The table version that rows written back to the same table were computed from (None: no table yet)."""

    version: int | None


@dataclass(frozen=True)
class Written:
    table: str
    version: int
    rows: int


# keywords of statements that change something, wherever they appear (a CTE, EXPLAIN ANALYZE runs what it explains)
_WRITING_KEYWORDS = frozenset({"INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "COPY", "ATTACH", "DETACH",
                               "INSTALL", "LOAD", "PRAGMA", "SET", "RESET", "CALL", "EXPORT", "IMPORT", "VACUUM",
                               "CHECKPOINT", "TRUNCATE", "MERGE", "ANALYZE", "USE"})


class Lake:
    def __init__(
        self,
        root: str,
        *,
        storage_options: Mapping[str, str] | None = None,
        rows_per_file: int = 2_000_000,
        spark_writer: SparkWriter = "auto",
    ) -> None:
        self.root = _normalise_root(root)
        self.storage_options = dict(storage_options or {}) or None
        self.rows_per_file = rows_per_file
        self.spark_writer = spark_writer

    # ---- naming and metadata -------------------------------------------------------------------------------

    def uri(self, name: str) -> str:
        if not re.fullmatch(NAME_PATTERN, name):
            raise TslrecError(f"bad table name {name!r}: use letters, digits, '.', '_' and '-'")
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        return DeltaTable.is_deltatable(self.uri(name), self.storage_options)

    def table(self, name: str, version: int | None = None) -> DeltaTable:
        if not self.exists(name):
            raise TslrecError(
                f"table '{name}' does not exist in the lake {self.root}: run the stage that writes it first "
                f"(existing tables: {', '.join(self.names()) or 'none'})"
            )
        try:
            return DeltaTable(self.uri(name), version=version, storage_options=self.storage_options)
        except Exception as exc:  # delta-rs raises its own types for a missing version
            raise TslrecError(f"table '{name}' has no version {version}: {exc}") from exc

    def version(self, name: str) -> int:
        return self.table(name).version()

    def column_max(self, name: str, column: str, version: int | None = None,
                   where: Mapping[str, str] | None = None) -> Any:
        """The largest value of a column over the (partition-selected) rows, from the files' min/max statistics
        without reading a row; the column is read instead when a file has rows but no statistics for it. None
        when there are no rows."""
        dt = self.table(name, version)
        self._partition_filter(dt, name, where)  # refuses a `where` on a column that is not a partition column
        files = pa.table(dt.get_add_actions(flatten=True))
        for key, value in (where or {}).items():
            files = files.filter(pc.equal(files[f"partition.{key}"], str(value)))
        files = files.filter(pc.greater(files["num_records"], 0))
        if files.num_rows == 0:
            return None
        largest = files.column(f"max.{column}") if f"max.{column}" in files.column_names else None
        if largest is None or largest.null_count:
            return pc.max(self.read_arrow(name, version, where, columns=[column])[column]).as_py()
        return pc.max(largest).as_py()

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        return self.table(name).history(limit)

    def names(self) -> list[str]:
        fs, path = pafs.FileSystem.from_uri(self.root)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return []
        folders = [i for i in fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.Directory]
        return sorted(i.base_name for i in folders if fs.get_file_info(f"{i.path}/_delta_log").type == pafs.FileType.Directory)

    def vacuum(self, name: str, retention_hours: int = 168) -> list[str]:
        """Deletes files no version needs any more and older than `retention_hours`, including leftovers of writes
        that died before their commit. A write in progress has such files too: retention 0 only when none runs."""
        return self.table(name).vacuum(retention_hours, dry_run=False, enforce_retention_duration=False, full=True)

    # ---- writes ---------------------------------------------------------------------------------------------

    def write(
        self,
        data: DataFrame | pa.Table | pd.DataFrame,
        name: str,
        mode: Mode,
        commit: Commit,
        partition_by: Sequence[str] = ("run_id",),
        within: Mapping[str, str | int] | None = None,
        based_on: BasedOn | None = None,
    ) -> Written:
        """One new table version. `replace_run` replaces the rows of commit.run_id and nothing else; `within`
        narrows that to the run's rows with these column values (e.g. one backbone's metrics of the run).

        based_on: the rows were computed from the table as one version of it (None: it did not exist), so the
        commit must come right after that version: if another writer committed in between, it raises
        ConcurrentCommit instead of landing after it (Delta's optimistic concurrency; an append alone would never
        conflict). Spark writes only; they go through the lake's own committer then."""
        partition_by = list(partition_by)
        if mode == "replace_run" and "run_id" not in partition_by:
            raise ValueError(f"replace_run needs the table '{name}' partitioned by run_id")
        if within and mode != "replace_run":
            raise ValueError("`within` narrows replace_run only")
        replaced = {"run_id": commit.run_id, **(within or {})}
        exists = self.exists(name)
        if mode == "create" and exists:
            raise TslrecError(f"table '{name}' already exists in {self.root}; use mode overwrite or append")
        if based_on and (isinstance(data, (pa.Table, pd.DataFrame)) or exists != (based_on.version is not None)):
            if isinstance(data, (pa.Table, pd.DataFrame)):
                raise ValueError("based_on is for Spark writes")
            raise ConcurrentCommit(f"table '{name}' was {'created' if exists else 'removed'} since it was read")
        if not isinstance(data, (pa.Table, pd.DataFrame)):
            if self._spark_delta(data.sparkSession) and not based_on:
                return self._write_spark_delta(data, name, mode, commit, partition_by, replaced)
            return self._write_spark_files(data, name, mode, commit, partition_by, exists, replaced,
                                           based_on.version if based_on else None)
        table = pa.Table.from_pandas(data, preserve_index=False) if isinstance(data, pd.DataFrame) else data
        return self._write_arrow(table, name, mode, commit, partition_by, exists, replaced)

    def _spark_delta(self, spark: SparkSession) -> bool:
        from tslrec.spark import delta_jars_loaded

        if self.spark_writer == "auto":
            return delta_jars_loaded(spark)
        if self.spark_writer == "spark-delta" and not delta_jars_loaded(spark):
            raise TslrecError(
                "lake.writer=spark-delta but the Delta jars are not loaded in this SparkSession "
                "(spark.sql.extensions lacks io.delta.sql.DeltaSparkSessionExtension); use lake.writer=auto"
            )
        return self.spark_writer == "spark-delta"

    def _write_arrow(
        self,
        table: pa.Table,
        name: str,
        mode: Mode,
        commit: Commit,
        partition_by: list[str],
        exists: bool,
        replaced: Mapping[str, str | int],
    ) -> Written:
        schema = nullable_schema(table.schema)
        table = table.cast(schema)
        adds_columns = False
        if exists and mode != "overwrite":
            added, lacking = self._check_schema(name, schema, other_release=True)
            adds_columns = bool(added)
            for field in lacking:
                table = table.append_column(field, pa.nulls(table.num_rows, field.type))
        if mode == "replace_run":
            for column, value in replaced.items():
                _check_only(pc.unique(table[column]).to_pylist(), column, value, name)
        options: dict[str, Any] = {
            "partition_by": partition_by or None,
            "storage_options": self.storage_options,
            "commit_properties": CommitProperties(custom_metadata=commit.metadata()),
            **({"schema_mode": "merge"} if adds_columns else {}),
        }
        if not exists:
            write_deltalake(self.uri(name), table, mode="error", **options)
        elif mode == "append":
            write_deltalake(self.uri(name), table, mode="append", **options)
        elif mode == "overwrite":
            write_deltalake(self.uri(name), table, mode="overwrite", schema_mode="overwrite", **options)
        else:
            write_deltalake(self.uri(name), table, mode="overwrite", predicate=_predicate(replaced), **options)
        return Written(name, self.version(name), table.num_rows)

    def _write_spark_files(
        self,
        df: DataFrame,
        name: str,
        mode: Mode,
        commit: Commit,
        partition_by: list[str],
        exists: bool,
        replaced: Mapping[str, str | int],
        read_version: int | None,
    ) -> Written:
        """Replacing rows by files needs the replaced columns to be partition columns. With read_version, the
        commit must be the version right after it."""
        from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

        from tslrec.spark import wait_until_no_task_runs

        if mode == "replace_run" and set(replaced) - set(partition_by):
            raise ValueError(f"table '{name}': Spark writes replace partitions; {sorted(replaced)} must be partition columns")
        schema = nullable_schema(to_arrow_schema(df.schema, timezone="UTC"))
        if exists and mode != "overwrite":
            self._check_schema(name, schema)
        write_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        task = functools.partial(
            _write_task_files,
            table_uri=self.uri(name),
            schema=schema,
            partition_by=tuple(partition_by),
            write_id=write_id,
            rows_per_file=self.rows_per_file,
        )
        context = df.sparkSession.sparkContext
        # if one task fails, Spark kills the others by interrupting them, rather than letting them finish their files
        context.setInterruptOnCancel(True)
        try:
            files = df.mapInArrow(task, from_arrow_schema(_FILE_REPORT)).collect()
            actions = [
                AddAction(f.path, f.size, json.loads(f.partition_values), f.modification_time, True, f.stats)
                for f in files
            ]
            if mode == "replace_run":
                for column, value in replaced.items():
                    _check_only({a.partition_values[column] for a in actions}, column, str(value), name)
            self._commit_files(name, actions, schema, mode, commit, partition_by, exists, replaced, read_version)
        except BaseException:
            wait_until_no_task_runs(df.sparkSession)
            if not self._committed(name, write_id):  # the exception may come after the commit landed
                self._discard_write(name, write_id)
            raise
        finally:
            context.setInterruptOnCancel(False)
        rows = sum(json.loads(a.stats)["numRecords"] for a in actions)
        return Written(name, self.version(name), rows)

    def _commit_files(
        self,
        name: str,
        actions: list[AddAction],
        schema: pa.Schema,
        mode: Mode,
        commit: Commit,
        partition_by: list[str],
        exists: bool,
        replaced: Mapping[str, str | int],
        read_version: int | None = None,
    ) -> None:
        """With read_version, from the table at that version and with no retry at a later one."""
        properties = CommitProperties(custom_metadata=commit.metadata(),
                                      max_commit_retries=0 if read_version is not None else None)
        try:
            if not exists:
                create_table_with_add_actions(
                    self.uri(name),
                    Schema.from_arrow(schema),
                    actions,
                    mode="error",
                    partition_by=partition_by or None,
                    storage_options=self.storage_options,
                    commit_properties=properties,
                )
                return
            self.table(name, read_version).create_write_transaction(
                actions,
                mode="append" if mode == "append" else "overwrite",
                schema=schema,
                partition_by=partition_by or None,
                partition_filters=[(c, "=", str(v)) for c, v in replaced.items()] if mode == "replace_run" else None,
                commit_properties=properties,
            )
        except CommitFailedError as exc:
            if read_version is None:
                raise
            raise ConcurrentCommit(f"table '{name}' has a version after {read_version}: {exc}") from exc
        except Exception:
            if not exists and self.exists(name):  # another writer created it first
                raise ConcurrentCommit(f"table '{name}' was created by another writer meanwhile") from None
            raise

    def _committed(self, name: str, write_id: str) -> bool:
        """Whether the live version may hold files of this write (their names carry the write id): files are
        removed only when it is known not to."""
        try:
            return self.exists(name) and any(write_id in uri for uri in self.table(name).file_uris())
        except Exception as exc:  # noqa: BLE001 - whatever keeps us from reading the table, keep the files
            log.warning("could not tell whether write %s to %s was committed (%s): its files are kept", write_id, name, exc)
            return True

    def _discard_write(self, name: str, write_id: str) -> None:
        """The files of a failed write are unreferenced either way: removing them only saves the space."""
        fs, path = pafs.FileSystem.from_uri(self.uri(name))
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
            for info in infos:
                if info.type == pafs.FileType.File and write_id in info.base_name:
                    fs.delete_file(info.path)
        except OSError as exc:
            log.warning("could not remove the files of failed write %s to %s: %s", write_id, name, exc)

    def _write_spark_delta(
        self,
        df: DataFrame,
        name: str,
        mode: Mode,
        commit: Commit,
        partition_by: list[str],
        replaced: Mapping[str, str | int],
    ) -> Written:
        writer = df.write.format("delta").option("userMetadata", json.dumps(commit.metadata()))
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if mode == "create":
            writer = writer.mode("errorifexists")
        elif mode == "append":
            writer = writer.mode("append")
        elif mode == "overwrite":
            writer = writer.mode("overwrite").option("overwriteSchema", "true")
        else:
            writer = writer.mode("overwrite").option("replaceWhere", _predicate(replaced))
        writer.save(self.uri(name))
        last = self.history(name, 1)[0]
        return Written(name, last["version"], int(last.get("operationMetrics", {}).get("numOutputRows", -1)))

    def _check_schema(self, name: str, schema: pa.Schema,
                      other_release: bool = False) -> tuple[list[str], list[pa.Field]]:
        """(the columns the write adds, the table's columns it lacks). With other_release (delta-rs writes), rows of
        a release that records more or fewer columns are welcome: the rows without a column read it as null.
        A changed column is refused, and so is any difference for Spark writes; the order does not matter."""
        current = nullable_schema(pa.schema(self.table(name).schema().to_arrow()))
        wanted = {f.name: f for f in schema}
        changed = [f.name for f in current if f.name in wanted and not wanted[f.name].equals(f)]
        added = [n for n in wanted if n not in current.names]
        lacking = [f for f in current if f.name not in wanted]
        if not (changed or added or lacking):
            return [], []
        if other_release and not changed:
            if added:
                log.info("table '%s' gains the columns %s", name, ", ".join(added))
            if lacking:
                log.info("table '%s': this write has no columns %s (null in its rows)", name,
                         ", ".join(f.name for f in lacking))
            return added, lacking
        raise TslrecError(
            f"table '{name}' holds rows of schema [{_describe(current)}] but this write has "
            f"[{_describe(schema)}]; write to a new lake root or overwrite the whole table"
        )

    # ---- reads ----------------------------------------------------------------------------------------------

    def read_spark(
        self, spark: SparkSession, name: str, version: int | None = None, where: Mapping[str, str] | None = None
    ) -> DataFrame:
        """`where` selects partitions by value (run_id, dataset); only the matching files are read."""
        from pyspark.sql import DataFrame
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import from_arrow_schema

        if self._spark_delta(spark):
            reader = spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            df = reader.load(self.uri(name))
            for column, value in (where or {}).items():
                df = df.filter(F.col(column) == value)
            return df
        dt = self.table(name, version)
        _refuse_unsupported_features(dt, name)
        schema = pa.schema(dt.schema().to_arrow())
        partition_columns = dt.metadata().partition_columns
        data_schema = from_arrow_schema(
            pa.schema([f for f in schema if f.name not in partition_columns]), prefer_timestamp_ntz=False
        )
        groups = delta_file_groups(dt, partition_columns, self._partition_filter(dt, name, where))
        if not groups:
            return spark.createDataFrame([], from_arrow_schema(schema, prefer_timestamp_ntz=False))
        frames = []
        full = from_arrow_schema(schema, prefer_timestamp_ntz=False)
        for values, uris in groups.items():
            df = spark.read.schema(data_schema).parquet(*uris)
            df = df.withColumns({c: F.lit(v).cast(full[c].dataType) for c, v in zip(partition_columns, values)})
            frames.append(df.select(*schema.names))
        return functools.reduce(DataFrame.unionByName, frames)

    def read_arrow(
        self,
        name: str,
        version: int | None = None,
        where: Mapping[str, str] | None = None,
        columns: Sequence[str] | None = None,
        keep: Callable[[pa.RecordBatch], np.ndarray] | None = None,
    ) -> pa.Table:
        """`keep` (a row mask per record batch) reads batch by batch, so rows it drops never sit in memory together:
        how one process of many reads only its shard of a table."""
        dt = self.table(name, version)
        dataset = self._dataset(dt, name)
        selection = self._selection(dt, name, where)
        columns = list(columns) if columns else None
        if keep is None:
            return dataset.to_table(columns=columns, filter=selection)
        schema = pa.schema([dataset.schema.field(c) for c in columns]) if columns else dataset.schema
        batches = dataset.to_batches(columns=columns, filter=selection)
        return pa.Table.from_batches([batch.filter(pa.array(keep(batch))) for batch in batches], schema=schema)

    def dataset(self, name: str, version: int | None = None) -> ds.FileSystemDataset:
        """The table version as an Arrow dataset whose files are known only by their partition values.

        delta-rs attaches each file's min/max statistics to it as a guarantee, and for a column without
        statistics (strings written from Spark, columns past Spark's first 32) a guarantee no row meets
        (`x >= null`): any filter on such a column would find nothing. Partition values alone are always exact.
        """
        return self._dataset(self.table(name, version), name)

    @staticmethod
    def _dataset(dt: DeltaTable, name: str) -> ds.FileSystemDataset:
        _refuse_unsupported_features(dt, name)
        full = dt.to_pyarrow_dataset()
        partition_columns = dt.metadata().partition_columns
        values = {a["path"]: a for a in pa.table(dt.get_add_actions(flatten=True)).to_pylist()}
        fragments = []
        for fragment in full.get_fragments():
            action = values[fragment.path]
            guarantee = pc.scalar(True)
            for column in partition_columns:
                value = action[f"partition.{column}"]
                guarantee &= pc.field(column).is_null() if value is None else pc.field(column) == value
            fragments.append(full.format.make_fragment(fragment.path, filesystem=full.filesystem,
                                                       partition_expression=guarantee))
        return ds.FileSystemDataset(fragments, full.schema, full.format, full.filesystem)

    def _selection(self, dt: DeltaTable, name: str, where: Mapping[str, str] | None) -> pc.Expression | None:
        """Rows whose partition columns have these values."""
        if not where:
            return None
        self._partition_filter(dt, name, where)
        condition = pc.scalar(True)
        for column, value in where.items():
            condition &= pc.field(column) == value
        return condition

    def read_pandas(
        self,
        name: str,
        version: int | None = None,
        where: Mapping[str, str] | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        return self.read_arrow(name, version, where, columns).to_pandas()

    def sql(self, query: str) -> pa.Table:
        """Read-only DuckDB over every table of the lake, each visible under its name. One SELECT (or EXPLAIN)
        statement; anything that writes, and any file access beyond the lake's tables, is refused."""
        import duckdb

        try:
            statements = duckdb.extract_statements(query)
        except duckdb.Error as exc:
            raise TslrecError(f"the query does not parse: {exc}") from exc
        kinds = [s.type for s in statements]
        writing = sorted({query[start:].split(None, 1)[0].rstrip("(;").upper() for start, kind in duckdb.tokenize(query)
                          if kind == duckdb.token_type.keyword} & _WRITING_KEYWORDS)
        if len(kinds) != 1 or kinds[0] not in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN) or writing:
            found = ", ".join(k.name for k in kinds) or "none"
            raise TslrecError(
                f"the lake's SQL is read-only: give one SELECT statement (found: {found}"
                f"{'; with ' + ', '.join(writing) if writing else ''}). To change tables, run the stage that writes them"
            )
        con = duckdb.connect()
        for name in self.names():
            con.register(name, self.dataset(name))
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        try:
            return con.sql(query).to_arrow_table()
        except duckdb.Error as exc:
            raise TslrecError(f"the query failed: {exc}; tables: {', '.join(self.names())}") from exc

    def register_views(self, spark: SparkSession) -> list[str]:
        """Every table as a Spark SQL temporary view under its name, for `spark.sql` on a cluster."""
        names = self.names()
        for name in names:
            self.read_spark(spark, name).createOrReplaceTempView(name)
        return names

    @staticmethod
    def _partition_filter(dt: DeltaTable, name: str, where: Mapping[str, str] | None) -> list[tuple[str, str, str]]:
        partition_columns = dt.metadata().partition_columns
        for column in where or {}:
            if column not in partition_columns:
                raise TslrecError(
                    f"table '{name}' can be selected by its partition columns ({', '.join(partition_columns)}), "
                    f"not by '{column}'"
                )
        return [(c, "=", str(v)) for c, v in (where or {}).items()]


def nullable_schema(schema: pa.Schema) -> pa.Schema:
    """Spark's nullability flags change with the query plan; tables keep every field nullable so writes agree."""
    return pa.schema([_nullable_field(f) for f in schema])


def _nullable_field(field: pa.Field) -> pa.Field:
    tp = field.type
    if pa.types.is_list(tp):
        tp = pa.list_(_nullable_field(tp.value_field))
    elif pa.types.is_struct(tp):
        tp = pa.struct([_nullable_field(f) for f in tp])
    return pa.field(field.name, tp, nullable=True)


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def _normalise_root(root: str) -> str:
    if "://" in root:
        return root.rstrip("/")
    return str(Path(root).expanduser().resolve())


def _check_only(found: Any, column: str, value: str | int, name: str) -> None:
    others = sorted(set(found) - {value}, key=str)
    if others:
        raise TslrecError(f"replacing the rows of {column}={value!r} in table '{name}' got rows of other {column}: {others}")


def _predicate(replaced: Mapping[str, str | int]) -> str:
    """SQL equality conditions; values are names or integers (checked), so quoting cannot be broken."""
    parts = []
    for column, value in replaced.items():
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (
            isinstance(value, str) and not re.fullmatch(NAME_PATTERN, value)
        ):
            raise ValueError(f"cannot select rows by {column}={value!r}: use a name or an integer")
        parts.append(f"{column} = {value}" if isinstance(value, int) else f"{column} = '{value}'")
    return " AND ".join(parts)


def _refuse_unsupported_features(dt: DeltaTable, name: str) -> None:
    features = set(dt.protocol().reader_features or [])
    if features & {"deletionVectors", "columnMapping"}:
        raise TslrecError(
            f"table '{name}' uses {sorted(features)}, which only Spark's Delta reader applies; "
            "load the Delta jars into the SparkSession and set lake.writer=spark-delta"
        )


def delta_file_groups(
    dt: DeltaTable, partition_columns: list[str], filters: list[tuple[str, str, str]]
) -> dict[tuple[str, ...], list[str]]:
    """The data files of a Delta table version, grouped by their partition values (which are not in the files)."""
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    wanted = {c: v for c, _, v in filters}
    base = dt.table_uri.rstrip("/")
    groups: dict[tuple[str, ...], list[str]] = {}
    for action in actions:
        values = tuple(action[f"partition.{c}"] for c in partition_columns)
        if all(action[f"partition.{c}"] == v for c, v in wanted.items()):
            path = action["path"]
            groups.setdefault(values, []).append(path if "://" in path else f"{base}/{path}")
    return groups


class _FileStats:
    """Delta file statistics: row count, and min/max/null count of integer columns (safe for data skipping)."""

    def __init__(self, schema: pa.Schema) -> None:
        self.rows = 0
        self.columns = [f.name for f in schema if pa.types.is_integer(f.type)]
        self.minimum: dict[str, int] = {}
        self.maximum: dict[str, int] = {}
        self.nulls = {c: 0 for c in self.columns}

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        for column in self.columns:
            self.nulls[column] += table[column].null_count
            bounds = pc.min_max(table[column]).as_py()
            if bounds["min"] is not None:
                self.minimum[column] = min(bounds["min"], self.minimum.get(column, bounds["min"]))
                self.maximum[column] = max(bounds["max"], self.maximum.get(column, bounds["max"]))

    def to_json(self) -> str:
        return json.dumps(
            {"numRecords": self.rows, "minValues": self.minimum, "maxValues": self.maximum, "nullCount": self.nulls}
        )


def _write_task_files(
    batches: Iterator[pa.RecordBatch],
    *,
    table_uri: str,
    schema: pa.Schema,
    partition_by: tuple[str, ...],
    write_id: str,
    rows_per_file: int,
) -> Iterator[pa.RecordBatch]:
    """Runs in a Spark task: streams its rows into Parquet files, one folder per partition value, and reports them."""
    from pyspark import TaskContext

    context = TaskContext.get()
    prefix = f"part-{context.partitionId():05d}-{write_id}-a{context.attemptNumber()}" if context else f"part-{write_id}"
    data_schema = pa.schema([f for f in schema if f.name not in partition_by])
    fs, root = pafs.FileSystem.from_uri(table_uri)
    open_files: dict[tuple[str, ...], tuple[pq.ParquetWriter, str, _FileStats]] = {}
    reports: list[dict[str, Any]] = []
    serial = 0

    def close(key: tuple[str, ...]) -> None:
        writer, relative, stats = open_files.pop(key)
        writer.close()
        reports.append(
            {
                "path": relative,
                "size": fs.get_file_info(f"{root}/{relative}").size,
                "partition_values": json.dumps(dict(zip(partition_by, key))),
                "modification_time": int(time.time() * 1000),
                "stats": stats.to_json(),
            }
        )

    for batch in batches:
        table = pa.Table.from_batches([batch]).cast(schema)
        for key, part in _split_by_partition(table, partition_by):
            while part.num_rows:
                if key not in open_files:
                    folder = "/".join(f"{c}={v}" for c, v in zip(partition_by, key))
                    relative = f"{folder}/{prefix}-{serial:04d}.parquet" if folder else f"{prefix}-{serial:04d}.parquet"
                    serial += 1
                    fs.create_dir(f"{root}/{folder}" if folder else root, recursive=True)
                    writer = pq.ParquetWriter(f"{root}/{relative}", data_schema, filesystem=fs)
                    open_files[key] = (writer, relative, _FileStats(data_schema))
                writer, _, stats = open_files[key]
                chunk = part.slice(0, rows_per_file - stats.rows)
                writer.write_table(chunk)
                stats.add(chunk)
                part = part.slice(chunk.num_rows)
                if stats.rows >= rows_per_file:
                    close(key)
    for key in list(open_files):
        close(key)
    yield pa.RecordBatch.from_pylist(reports, schema=_FILE_REPORT)


def _split_by_partition(table: pa.Table, partition_by: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], pa.Table]]:
    if not partition_by:
        yield (), table
        return
    keys = table.select(list(partition_by)).group_by(list(partition_by)).aggregate([]).to_pylist()
    for key in keys:
        values = tuple(key[c] for c in partition_by)
        for column, value in zip(partition_by, values):
            if value is None or not re.fullmatch(NAME_PATTERN, str(value)):
                raise ValueError(f"partition column {column} holds {value!r}; it must match {NAME_PATTERN}")
        mask = functools.reduce(pc.and_, [pc.equal(table[c], v) for c, v in zip(partition_by, values)])
        yield tuple(str(v) for v in values), table.filter(mask).drop_columns(list(partition_by))
