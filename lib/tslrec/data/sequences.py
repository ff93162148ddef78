"""Sequences: each user's items in time order and the leave-one-out split.

train = all but the last two items, valid = the second to last, test = the last. Users with fewer than three
items cannot give all three parts: with sequences.short_users=train_only they keep every item as training data
and have no valid or test item (so they are never evaluated); with `drop` they are left out of user_sequences.
Either way dataset_stats counts them.
"""

from __future__ import annotations

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.lake import Written
from tslrec.logs import get_logger

log = get_logger(__name__)

STAGE = "sequences"
MIN_LENGTH = 3


def run(ctx: RunContext) -> list[Written]:
    config = ctx.config
    commit = ctx.commit(STAGE)
    interactions = ctx.lake.read_spark(ctx.spark, "interactions", where={"run_id": ctx.run_id})
    events = F.struct("event_time", "src_file", "src_row", "src_pos", "item_idx")
    # made once, by the write, and kept on disk for the statistics
    per_user = (
        interactions.groupBy("user_idx")
        .agg(F.sort_array(F.collect_list(events)).alias("events"))
        .select("user_idx", F.transform("events", lambda e: e["item_idx"]).alias("items"))
        .withColumn("n_items", F.size("items"))
        .persist(StorageLevel.DISK_ONLY)
    )
    full = F.col("n_items") >= MIN_LENGTH
    kept = per_user if config.sequences.short_users == "train_only" else per_user.filter(full)
    sequences = kept.select(
        F.lit(ctx.run_id).alias("run_id"),
        F.lit(config.dataset.name).alias("dataset"),
        "user_idx",
        "items",
        "n_items",
        F.when(full, F.slice("items", 1, F.col("n_items") - 2)).otherwise(F.col("items")).alias("train_items"),
        F.when(full, F.element_at("items", -2)).alias("valid_item"),
        F.when(full, F.element_at("items", -1)).alias("test_item"),
    )
    with ctx.progress("order events per user, write user_sequences"):
        written = ctx.lake.write(sequences, "user_sequences", "replace_run", commit)
    with ctx.progress("statistics"):
        stats = _statistics(ctx, per_user, kept, full)
    if stats["users"] != written.rows:
        raise TslrecError(f"user_sequences got {written.rows} rows but its statistics count {stats['users']} users; "
                          "this is a bug, please report it with the input")
    log.info(
        "%d users, %d items, %d interactions, density %.5f, average length %.2f (%d short users: %s)",
        stats["users"], stats["items"], stats["interactions"], stats["density"], stats["avg_length"],
        stats["short_users"], config.sequences.short_users,
    )
    return [written, ctx.lake.write(pa.Table.from_pylist([stats]), "dataset_stats", "replace_run", commit)]


def _statistics(ctx: RunContext, per_user: DataFrame, kept: DataFrame, full: Column) -> dict[str, object]:
    """The figures of the rows user_sequences was written from (persisted, so the same rows): one pass over the
    users and one over their distinct items, instead of reading the table back."""
    in_table = F.lit(True) if ctx.config.sequences.short_users == "train_only" else full
    length = F.when(in_table, F.col("n_items"))
    row = per_user.agg(
        F.count(length).alias("users"),
        F.count(F.when(full, 1)).alias("evaluated_users"),
        F.coalesce(F.sum(length), F.lit(0)).alias("interactions"),
        F.coalesce(F.avg(length), F.lit(0.0)).alias("avg_length"),
        F.percentile_approx(length, 0.5).alias("median_length"),
        F.min(length).alias("min_length"),
        F.max(length).alias("max_length"),
        F.count(F.when(~full, 1)).alias("short_users"),
    ).first().asDict()
    items = kept.select(F.explode("items")).distinct().count()
    users = row["users"]
    return {
        "run_id": ctx.run_id,
        "dataset": ctx.config.dataset.name,
        **row,
        "items": items,
        "density": row["interactions"] / (users * items) if users and items else 0.0,
        "short_user_policy": ctx.config.sequences.short_users,
        "config_hash": ctx.config_hash,
    }
