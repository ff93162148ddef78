"""Ingest: raw logs -> interactions, with every record accounted for.

Every record ends in exactly one place: `interactions`, or `quarantine` with a reason code: `malformed` (a record
that cannot be parsed), `duplicate` (removed by ingest.duplicates) or `kcore` (removed by the k-core filter).
Before it writes its report, the stage checks against the rows actually written that events in = interactions +
duplicates + k-core removals, and that the quarantine holds exactly the malformed records and removed events.
"""

from __future__ import annotations

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from tslrec.config import KCoreSection
from tslrec.context import RunContext
from tslrec.data import indexing
from tslrec.data.sources import describe_source, read_records
from tslrec.data.synthetic import planted_categories
from tslrec.errors import TslrecError
from tslrec.lake import Written
from tslrec.logs import get_logger
from tslrec.spark import shuffle_partitions

log = get_logger(__name__)

STAGE = "ingest"


def _event_order() -> list[Column]:
    """A user's events in time order; events without a time (text formats) in the order of the file."""
    return [F.col("event_time").asc_nulls_first(), F.col("src_file"), F.col("src_row"), F.col("src_pos")]


def run(ctx: RunContext) -> list[Written]:
    config = ctx.config
    commit = ctx.commit(STAGE)
    source = describe_source(config.dataset)
    log.info("reading %s", source)
    with ctx.progress("validate records and duplicates"):
        # One pass over the input, evaluated once and kept on disk (the heap stays free for the shuffles whatever
        # the input size): every later count and write sees the same rows. Spread by user alone, which every
        # duplicate policy's window accepts: the join to the user ids then moves only the ids, not the events again
        records, n_blank = read_records(ctx.spark, config)
        rows = _record_rows(records).repartition(shuffle_partitions(ctx.spark), "user")
        rows = _flag_duplicates(rows, config.ingest.duplicates).persist(StorageLevel.DISK_ONLY)
        counts = rows.agg(
            F.count("reason").alias("malformed"),
            F.count(F.when(F.col("src_pos") == 0, 1)).alias("valid"),  # a valid record has at least one event
            F.count("src_pos").alias("events"),
            F.count("duplicate").alias("duplicates"),
        ).first()
    n_malformed, n_events, n_duplicates = counts["malformed"], counts["events"], counts["duplicates"]
    n_records = n_malformed + counts["valid"]
    if n_records == 0:
        raise TslrecError(f"{source} holds no records")
    bad_fraction = n_malformed / n_records
    log.info("%d records, %d malformed (%.2f%%), %d events", n_records, n_malformed, 100 * bad_fraction, n_events)
    if n_blank:
        log.warning("%s: %d blank lines, skipped (not records); the ingest report counts them", source, n_blank)
    malformed = _malformed_rows(rows)
    if bad_fraction > config.ingest.max_bad_fraction:
        ctx.lake.write(_tagged(ctx, malformed), "quarantine", "replace_run", commit)
        examples = "; ".join(f"{r.src_file}:{r.src_row}: {r.reason}" for r in malformed.limit(5).collect())
        raise TslrecError(
            f"{source}: {n_malformed} of {n_records} records are malformed ({bad_fraction:.2%}), more than "
            f"ingest.max_bad_fraction={config.ingest.max_bad_fraction}. They are in the 'quarantine' table of run "
            f"'{ctx.run_id}'. First ones: {examples}. Fix the input, or raise ingest.max_bad_fraction if they may be skipped."
        )
    log.info("%d duplicate events (policy %s)", n_duplicates, config.ingest.duplicates)
    events = rows.filter(F.col("reason").isNull()).drop("reason", "raw")
    duplicates = _event_rows(events.filter(F.col("duplicate").isNotNull()).withColumnRenamed("duplicate", "reason"),
                             "duplicate")
    unique = events.filter(F.col("duplicate").isNull()).drop("duplicate")
    kept, removed, n_kcore = _kcore(ctx, unique, config.ingest.kcore)

    written: list[Written] = []
    with ctx.progress("ids"):
        users, items = indexing.resolve(ctx, kept, commit)
    written += [r.written for r in (users, items) if r.written]

    quarantine = malformed.unionByName(duplicates).unionByName(removed)
    interactions = (
        kept.join(users.ids, kept["user"] == users.ids["user_id"])
        .join(F.broadcast(items.ids), kept["item"] == items.ids["item_id"])
        .select("user_idx", "item_idx", "event_time", "src_file", "src_row", "src_pos")
    )
    with ctx.progress("write"):
        quarantined = ctx.lake.write(_tagged(ctx, quarantine), "quarantine", "replace_run", commit)
        kept_rows = ctx.lake.write(_tagged(ctx, interactions), "interactions", "replace_run", commit)
    written += [quarantined, kept_rows]
    _check_accounting(n_events, n_malformed, n_duplicates, n_kcore, quarantined.rows, kept_rows.rows)

    report = {
        "run_id": ctx.run_id,
        "dataset": config.dataset.name,
        "source": source,
        "records": n_records,
        "malformed": n_malformed,
        "blank_lines": n_blank,
        "bad_fraction": bad_fraction,
        "events": n_events,
        "duplicates": n_duplicates,
        "duplicate_policy": config.ingest.duplicates,
        "kcore_removed": n_kcore,
        "interactions": kept_rows.rows,
        "users": users.distinct,
        "items": items.distinct,
        "new_users": users.written.rows if users.written else 0,
        "new_items": items.written.rows if items.written else 0,
        "config_hash": ctx.config_hash,
    }
    log.info("ingest report: %s", ", ".join(f"{k}={v}" for k, v in report.items() if k not in ("run_id", "dataset")))
    with ctx.progress("write report"):
        written.append(ctx.lake.write(_one_row(report), "ingest_report", "replace_run", commit))
        if config.dataset.format == "synthetic":
            truth = _with_run(ctx, planted_categories(config.synthetic))
            written.append(ctx.lake.write(truth, "synthetic_categories", "replace_run", commit))
    return written


def _record_rows(records: DataFrame) -> DataFrame:
    """A valid record as its events (src_pos 0, 1, ...), a malformed one as one row with its reason and no user,
    item or position: both kinds in one frame, so the input is read and checked in one pass."""
    return records.select(
        "src_file", "src_row", "raw", "reason", "user", "event_time",
        F.posexplode_outer("items").alias("src_pos", "item"),
    )


def _flag_duplicates(rows: DataFrame, policy: str) -> DataFrame:
    """Adds `duplicate`: why an event is a duplicate under the policy, null when it is kept or not an event (a
    malformed record: those share one window partition, without a user, and are never flagged)."""
    if policy == "none":
        return rows.withColumn("duplicate", F.lit(None).cast("string"))
    if policy == "exact":
        seen = F.row_number().over(
            Window.partitionBy("user", "item", "event_time").orderBy("src_file", "src_row", "src_pos")
        )
        is_duplicate = F.col("event_time").isNotNull() & (seen > 1)
        text = "same user, item and timestamp as an earlier event (ingest.duplicates=exact)"
    elif policy == "first":
        seen = F.row_number().over(Window.partitionBy("user", "item").orderBy(*_event_order()))
        is_duplicate = seen > 1
        text = "the user already interacted with this item (ingest.duplicates=first)"
    else:
        previous = F.lag("item").over(Window.partitionBy("user").orderBy(*_event_order()))
        is_duplicate = F.coalesce(previous == F.col("item"), F.lit(False))
        text = "same item as the user's previous event (ingest.duplicates=consecutive)"
    return rows.withColumn("duplicate", F.when(F.col("reason").isNull() & is_duplicate, F.lit(text)))


def _kcore(ctx: RunContext, events: DataFrame, kcore: KCoreSection) -> tuple[DataFrame, DataFrame, int]:
    """Repeatedly drops events of users and items with too few interactions, until none is left to drop."""
    empty = _event_rows(events.withColumn("reason", F.lit(None).cast("string")).limit(0), "kcore")
    if kcore.user == 0 and kcore.item == 0:
        return events, empty, 0
    removed, total = [], 0
    for round_ in range(1, kcore.max_iterations + 1):
        with ctx.progress(f"k-core round {round_}"):
            counted = (
                events.withColumn("_users", F.count(F.lit(1)).over(Window.partitionBy("user")))
                .withColumn("_items", F.count(F.lit(1)).over(Window.partitionBy("item")))
                .localCheckpoint()
            )
            reason = F.when(
                F.col("_users") < kcore.user,
                F.format_string(f"k-core round {round_}: the user has %d interactions, fewer than {kcore.user}", "_users"),
            ).when(
                F.col("_items") < kcore.item,
                F.format_string(f"k-core round {round_}: the item has %d interactions, fewer than {kcore.item}", "_items"),
            )
            counted = counted.withColumn("reason", reason)
            dropped = counted.filter(F.col("reason").isNotNull())
            n = dropped.count()
        log.info("k-core round %d: %d events removed", round_, n)
        if n == 0:
            return events, _union(removed, empty), total
        removed.append(_event_rows(dropped, "kcore"))
        total += n
        events = counted.filter(F.col("reason").isNull()).drop("_users", "_items", "reason")
    raise TslrecError(
        f"the k-core filter (user>={kcore.user}, item>={kcore.item}) still removed events after "
        f"{kcore.max_iterations} rounds; raise ingest.kcore.max_iterations"
    )


def _union(frames: list[DataFrame], empty: DataFrame) -> DataFrame:
    result = empty
    for frame in frames:
        result = result.unionByName(frame)
    return result


def _malformed_rows(rows: DataFrame) -> DataFrame:
    return rows.filter(F.col("reason").isNotNull()).select(
        "src_file",
        "src_row",
        "src_pos",
        F.lit("malformed").alias("reason_code"),
        "reason",
        "raw",
    )


def _event_rows(events: DataFrame, code: str) -> DataFrame:
    """Quarantine rows for single events; `raw` shows the event as user, item and time."""
    raw = F.concat_ws(" ", "user", "item", F.col("event_time").cast("string"))
    return events.select("src_file", "src_row", "src_pos", F.lit(code).alias("reason_code"), "reason", raw.alias("raw"))


def _tagged(ctx: RunContext, df: DataFrame) -> DataFrame:
    return df.select(F.lit(ctx.run_id).alias("run_id"), F.lit(ctx.config.dataset.name).alias("dataset"), "*")


def _check_accounting(events: int, malformed: int, duplicates: int, kcore: int, quarantined: int, kept: int) -> None:
    expected_quarantine = malformed + duplicates + kcore
    if quarantined != expected_quarantine or events != kept + duplicates + kcore:
        raise TslrecError(
            f"ingest lost track of rows: {events} events = {kept} kept + {duplicates} duplicates + {kcore} k-core "
            f"and {quarantined} quarantined = {malformed} malformed + {duplicates} + {kcore} do not both hold; "
            "this is a bug, please report it with the input"
        )


def _one_row(values: dict[str, object]) -> pa.Table:
    """A count that could not be taken (None: blank lines of files behind a URI) keeps its integer type."""
    table = pa.Table.from_pylist([values])
    typed = [pa.field(f.name, pa.int64()) if pa.types.is_null(f.type) else f for f in table.schema]
    return table.cast(pa.schema(typed))


def _with_run(ctx: RunContext, table: pa.Table) -> pa.Table:
    n = table.num_rows
    run = pa.table({"run_id": pa.array([ctx.run_id] * n, pa.string()), "dataset": pa.array([ctx.config.dataset.name] * n, pa.string())})
    return pa.Table.from_arrays([*run.columns, *table.columns], names=[*run.column_names, *table.column_names])
