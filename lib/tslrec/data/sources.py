"""Raw inputs read into one record-level shape, with a reason for every malformed record.

Every format yields the columns of RECORD_COLUMNS: where a record comes from (src_file, src_row: 1-based line of a
text file, data row of a CSV or Parquet file), its raw text when it is malformed, the reason (null when valid),
and the parsed user, items (one for event formats, many for a user_items line) and event_time (null when the
format has no time: the position in the file is the order then).
"""

from __future__ import annotations

import functools
from pathlib import Path

from deltalake import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from tslrec.config import Config, DatasetSection
from tslrec.data.input_files import InputFile, exists, first_line, input_files
from tslrec.data.numbering import number_blocks
from tslrec.data.synthetic import generate_events
from tslrec.errors import TslrecError
from tslrec.lake import delta_file_groups

RECORD_COLUMNS = ("src_file", "src_row", "raw", "reason", "user", "items", "event_time")
_INT_ID = r"^[0-9]+$"
_TIME_TYPES = (T.TimestampType, T.TimestampNTZType, T.DateType)  # read as times without parsing text


def read_records(spark: SparkSession, config: Config) -> tuple[DataFrame, int | None]:
    """The records of the input, and its blank lines: whitespace-only lines of a CSV input, which Spark's CSV
    reader skips without a trace, are counted here so the ingest report names them (other formats keep such a
    line as a malformed record: 0). None (unknown) unless every CSV file is local and uncompressed."""
    dataset = config.dataset
    if dataset.format == "synthetic":
        return _event_records(generate_events(spark, config.synthetic), dataset), 0
    path, files = _require_input(spark, dataset)
    if dataset.format == "csv":
        return _csv_records(spark, path, files, dataset), _blank_lines(files)
    readers = {
        "user_items": _user_items_records,
        "user_item": _user_item_records,
        "parquet": _parquet_records,
        "delta": _delta_records,
    }
    return readers[dataset.format](spark, path, dataset), 0


def describe_source(dataset: DatasetSection) -> str:
    return "synthetic generator" if dataset.format == "synthetic" else f"{dataset.format} at {dataset.path}"


def _blank_lines(files: list[InputFile]) -> int | None:
    if not all(file.local and not file.compressed for file in files):
        return None
    blank = 0
    for file in files:
        with open(file.name, "rb") as lines:
            blank += sum(1 for line in lines if not line.strip())
    return blank


def _require_input(spark: SparkSession, dataset: DatasetSection) -> tuple[str, list[InputFile]]:
    """The path and the files it names, which must hold some data."""
    if not dataset.path:
        raise TslrecError(f"dataset '{dataset.name}' has format {dataset.format} but no dataset.path")
    files = input_files(spark, dataset.path)
    if not any(file.size for file in files):
        if not exists(spark, dataset.path):
            raise TslrecError(
                f"input {dataset.path} of dataset '{dataset.name}' does not exist "
                f"(relative paths are read from {Path.cwd()}); set dataset.path=..."
            )
        what = f"its {len(files)} file(s) are empty" if files else "it holds no file (hidden and _-prefixed files are skipped)"
        raise TslrecError(f"input {dataset.path} of dataset '{dataset.name}' has no data: {what}; set dataset.path=...")
    return dataset.path, files


def _with_position(scan: DataFrame) -> DataFrame:
    """Adds src_file and src_row to a file scan: numbered per file, exactly, whatever the splits."""
    located = scan.select(
        "*",
        F.col("_metadata.file_path").alias("src_file"),
        F.col("_metadata.file_block_start").alias("_block"),
    )
    numbered, _ = number_blocks(located, group=["src_file"], block="_block", column="src_row", start=1)
    return numbered.drop("_block")


def _canonical_id(value: Column, id_type: str) -> Column:
    """The id as the registry keys it: integers lose leading zeros and signs are refused; text is trimmed."""
    text = F.trim(value)
    if id_type == "int":
        return F.when(text.rlike(_INT_ID), text.try_cast("long").cast("string"))
    return F.when(text != "", text)


def _id_reason(value: Column, canonical: Column, what: str, id_type: str) -> Column:
    empty = value.isNull() | (F.trim(value) == "")
    expected = _not_an_int(F.trim(value)) if id_type == "int" else F.lit(" is not text")
    return F.when(empty, F.lit(f"empty {what} id")).when(
        canonical.isNull(), F.concat(F.lit(f"{what} id '"), value, F.lit("'"), expected)
    )


def _not_an_int(token: Column) -> Column:
    """Why an integer id was refused: not digits, or digits beyond 64 bits."""
    return F.when(token.rlike(_INT_ID), F.lit(" is beyond 64-bit integers (set dataset.id_type=string)")).otherwise(
        F.lit(" is not an integer"))


def _records(df: DataFrame, raw: Column, reasons: list[Column], user: Column, items: Column, event_time: Column) -> DataFrame:
    reason = F.coalesce(*reasons) if len(reasons) > 1 else reasons[0]
    return df.select(
        "src_file",
        "src_row",
        F.when(reason.isNotNull(), raw).alias("raw"),
        reason.alias("reason"),
        F.when(reason.isNull(), user).alias("user"),
        F.when(reason.isNull(), items).alias("items"),
        F.when(reason.isNull(), event_time).cast("timestamp").alias("event_time"),
    )


def _tokens(spark: SparkSession, path: str) -> DataFrame:
    lines = _with_position(spark.read.text(path))
    # F.trim strips spaces only: a tab at a line's edge, or a file's byte-order mark, would become an empty or a
    # foreign first token and cost the line
    trimmed = F.regexp_replace(F.col("value"), r"^[\s\uFEFF]+|\s+$", "")
    return lines.withColumn("tokens", F.when(trimmed == "", F.array()).otherwise(F.split(trimmed, r"\s+")))


def _user_items_records(spark: SparkSession, path: str, dataset: DatasetSection) -> DataFrame:
    """`user item item ...`, items oldest first: one record per line."""
    df = _tokens(spark, path)
    n = F.size("tokens")
    user_token = F.element_at("tokens", 1)
    user = _canonical_id(user_token, dataset.id_type)
    item_tokens = F.slice("tokens", 2, F.greatest(n - 1, F.lit(1)))
    items = F.transform(item_tokens, lambda t: _canonical_id(t, dataset.id_type))
    bad_items = F.filter(F.arrays_zip(item_tokens.alias("token"), items.alias("id")), lambda p: p["id"].isNull())
    first_bad = F.element_at(bad_items, 1)["token"]
    reasons = [
        F.when(n < 2, F.concat(F.lit("expected a user id then at least one item id, found "), n.cast("string"),
                               F.lit(" field(s)"))),
        _id_reason(user_token, user, "user", dataset.id_type),
        F.when(F.size(bad_items) > 0, F.concat(
            F.lit("item id '"), first_bad, F.lit("' at position "),
            F.array_position(item_tokens, first_bad).cast("string"), _not_an_int(first_bad))),
    ]
    return _records(df, F.col("value"), reasons, user, items, F.lit(None))


def _user_item_records(spark: SparkSession, path: str, dataset: DatasetSection) -> DataFrame:
    """`user item`, one interaction per line, the lines of a user in time order."""
    df = _tokens(spark, path)
    n = F.size("tokens")
    user_token, item_token = F.element_at("tokens", 1), F.try_element_at("tokens", F.lit(2))
    user = _canonical_id(user_token, dataset.id_type)
    item = _canonical_id(item_token, dataset.id_type)
    reasons = [
        F.when(n != 2, F.concat(F.lit("expected 2 fields (user item), found "), n.cast("string"))),
        _id_reason(user_token, user, "user", dataset.id_type),
        _id_reason(item_token, item, "item", dataset.id_type),
    ]
    return _records(df, F.col("value"), reasons, user, F.array(item), F.lit(None))


def _csv_records(spark: SparkSession, path: str, files: list[InputFile], dataset: DatasetSection) -> DataFrame:
    """Files with a header are read by column name, each file by its own header, local or behind a URI: Spark alone
    would take the first file's header for all of them and map the others by position (a file with its columns in
    another order would swap users and items), and would drop the first line of a file without a header as if it
    were one."""
    if not dataset.csv.header:  # one read, columns by position
        return _csv_scan(spark, path, dataset, None)
    by_header: dict[tuple[str, ...], list[str]] = {}
    for file in files:
        by_header.setdefault(_header(first_line(spark, file.name), dataset.csv.delimiter), []).append(file.name)
    wanted = [dataset.columns.user, dataset.columns.item, dataset.columns.timestamp]
    for header, group in by_header.items():
        missing = [c for c in wanted if c not in header]
        if missing:
            raise TslrecError(
                f"{group[0]}{f' (and {len(group) - 1} more files with its first line)' if len(group) > 1 else ''}: "
                f"no column {', '.join(repr(c) for c in missing)} in its header line ({', '.join(header) or 'empty'}); "
                f"every CSV file needs a header naming {', '.join(wanted)} (dataset.columns), or set "
                f"dataset.csv.header=false when no file has one")
    scans = [_csv_scan(spark, group, dataset, (list(header), wanted)) for header, group in by_header.items()]
    df = functools.reduce(DataFrame.unionByName, scans)
    return _event_records(df, dataset, raw=F.col("_raw"), first_reason=F.col("_count_reason"), where=path)


def _csv_scan(
    spark: SparkSession, path: str | list[str], dataset: DatasetSection, named: tuple[list[str], list[str]] | None
) -> DataFrame:
    """Files that share one header (or none): every record with its raw line and, when its field count is off,
    the reason. With `named` (the files' header, the columns to keep), only those columns, so scans of different
    headers line up by name."""
    options = {"header": dataset.csv.header, "sep": dataset.csv.delimiter}
    columns = named[0] if named else spark.read.options(**options).csv(path).columns
    schema = T.StructType([T.StructField(c, T.StringType()) for c in columns] + [T.StructField("_corrupt", T.StringType())])
    scan = (
        spark.read.options(**options, mode="PERMISSIVE", columnNameOfCorruptRecord="_corrupt").schema(schema).csv(path)
    )
    df = _with_position(scan)
    raw = F.coalesce(F.col("_corrupt"), F.concat_ws(dataset.csv.delimiter, *[F.coalesce(F.col(c), F.lit("")) for c in columns]))
    wrong_count = F.when(
        F.col("_corrupt").isNotNull(), F.lit(f"wrong field count: expected {len(columns)} fields ({', '.join(columns)})")
    )
    if named is None:
        return _event_records(df, dataset, raw=raw, first_reason=wrong_count, where=str(path), available=columns)
    return df.select(*named[1], "src_file", "src_row", raw.alias("_raw"), wrong_count.alias("_count_reason"))


def _header(line: str, delimiter: str) -> tuple[str, ...]:
    """A file's first line (without its line break) as column names (the quotes around names removed)."""
    return tuple(name.strip().strip('"') for name in line.split(delimiter)) if line.strip() else ()


def _parquet_records(spark: SparkSession, path: str, dataset: DatasetSection) -> DataFrame:
    return _event_records(_with_position(spark.read.parquet(path)), dataset, where=path)


def _delta_records(spark: SparkSession, path: str, dataset: DatasetSection) -> DataFrame:
    try:
        table = DeltaTable(path)
    except Exception as exc:
        raise TslrecError(f"{path} is not a readable Delta table: {exc}") from exc
    partition_columns = table.metadata().partition_columns
    scans = [
        _with_position(spark.read.parquet(*uris)).withColumns(dict(zip(partition_columns, map(F.lit, values))))
        for values, uris in delta_file_groups(table, partition_columns, []).items()
    ]
    if not scans:
        raise TslrecError(f"Delta table {path} holds no rows")
    return _event_records(functools.reduce(DataFrame.unionByName, scans), dataset, where=path)


def _event_records(
    df: DataFrame,
    dataset: DatasetSection,
    *,
    raw: Column | None = None,
    first_reason: Column | None = None,
    where: str = "the synthetic generator",
    available: list[str] | None = None,
) -> DataFrame:
    """Event logs: one interaction per row, its user, item and time in configured columns."""
    wanted = {"user": dataset.columns.user, "item": dataset.columns.item, "timestamp": dataset.columns.timestamp}
    available = available or df.columns
    missing = {k: c for k, c in wanted.items() if c not in available}
    if missing:
        role, column = next(iter(missing.items()))
        raise TslrecError(
            f"{where}: no column '{column}' for the {role} (dataset.columns.{role}); "
            f"its columns are: {', '.join(c for c in available if c not in ('src_file', 'src_row'))}"
        )
    user, user_reason = _column_id(df, wanted["user"], "user", dataset.id_type)
    item, item_reason = _column_id(df, wanted["item"], "item", dataset.id_type)
    time_column = F.col(wanted["timestamp"])
    time_type = df.schema[wanted["timestamp"]].dataType
    event_time = _parse_time(time_column, time_type, dataset)
    time_text = time_column.cast("string")
    typed = isinstance(time_type, (T.NumericType, *_TIME_TYPES))
    missing = time_column.isNull() if typed else time_column.isNull() | (F.trim(time_text) == "")
    expected = dataset.timestamp_pattern or f"ISO-8601 or epoch {dataset.timestamp_unit}"
    reasons = [
        *([first_reason] if first_reason is not None else []),
        user_reason,
        item_reason,
        F.when(missing, F.lit("missing timestamp")),
        F.when(event_time.isNull(), F.concat(F.lit("bad timestamp '"), time_text, F.lit(f"' (expected {expected})"))),
    ]
    data_columns = [c for c in df.columns if c not in ("src_file", "src_row", "_corrupt")]
    raw = raw if raw is not None else F.to_json(F.struct(*data_columns))
    return _records(df, raw, reasons, user, F.array(item), event_time)


def _column_id(df: DataFrame, column: str, what: str, id_type: str) -> tuple[Column, Column]:
    """A column's canonical id and why it is refused. An integer column skips the trip through text (trim, pattern,
    parse: two thirds of the validation of a 10M-row Parquet log) and gets the same ids and reasons its text would."""
    value = F.col(column)
    text = value.cast("string")
    if not isinstance(df.schema[column].dataType, T.IntegralType):
        canonical = _canonical_id(text, id_type)
        return canonical, _id_reason(text, canonical, what, id_type)
    if id_type == "string":
        return text, F.when(value.isNull(), F.lit(f"empty {what} id"))
    reason = F.when(value.isNull(), F.lit(f"empty {what} id")).when(
        value < 0, F.concat(F.lit(f"{what} id '"), text, F.lit("'"), _not_an_int(text)))
    return F.when(value >= 0, text), reason


def _parse_time(value: Column, data_type: T.DataType, dataset: DatasetSection) -> Column:
    if isinstance(data_type, _TIME_TYPES):
        return value.cast("timestamp")
    from_number = {"s": F.timestamp_seconds, "ms": F.timestamp_millis, "us": F.timestamp_micros}[dataset.timestamp_unit]
    if isinstance(data_type, T.NumericType):
        number = value if dataset.timestamp_unit == "s" else value.cast("long")
        return from_number(number)
    text = F.trim(value.cast("string"))
    number = text.try_cast("double") if dataset.timestamp_unit == "s" else text.try_cast("long")
    pattern = dataset.timestamp_pattern
    parsed = F.try_to_timestamp(text, F.lit(pattern)) if pattern else F.try_to_timestamp(text)
    return F.when(text.rlike(r"^-?[0-9]+(\.[0-9]+)?$"), from_number(number)).otherwise(parsed)
