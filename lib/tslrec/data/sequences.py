"""Sequences: each user's items in time order and the leave-one-out split.

train = all but the last two items, valid = the second to last, test = the last. Users with fewer than three
items cannot give all three parts: with sequences.short_users=train_only they keep every item as training data
and have no valid or test item (so they are never evaluated); with `drop` they are left out of user_sequences.
Either way dataset_stats counts them.
"""

from __future__ import annotations

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import functions as F

from tslrec.context import RunContext
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
    with ctx.progress("order events per user"):
        per_user = (
            interactions.groupBy("user_idx")
            .agg(F.sort_array(F.collect_list(events)).alias("events"))
            .select("user_idx", F.transform("events", lambda e: e["item_idx"]).alias("items"))
            .withColumn("n_items", F.size("items"))
            .persist(StorageLevel.DISK_ONLY)
        )
        n_short = per_user.filter(F.col("n_items") < MIN_LENGTH).count()
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
    with ctx.progress("write user_sequences"):
        written = ctx.lake.write(sequences, "user_sequences", "replace_run", commit)
    with ctx.progress("statistics"):
        stats = _statistics(ctx, n_short)
    log.info(
        "%d users, %d items, %d interactions, density %.5f, average length %.2f (%d short users: %s)",
        stats["users"], stats["items"], stats["interactions"], stats["density"], stats["avg_length"],
        n_short, config.sequences.short_users,
    )
    return [written, ctx.lake.write(pa.Table.from_pylist([stats]), "dataset_stats", "replace_run", commit)]


def _statistics(ctx: RunContext, n_short: int) -> dict[str, object]:
    """Describes the table as written, read back, so the figures are those of user_sequences itself."""
    table = ctx.lake.read_spark(ctx.spark, "user_sequences", where={"run_id": ctx.run_id})
    row = table.agg(
        F.count(F.lit(1)).alias("users"),
        F.count("test_item").alias("evaluated_users"),
        F.coalesce(F.sum("n_items"), F.lit(0)).alias("interactions"),
        F.coalesce(F.avg("n_items"), F.lit(0.0)).alias("avg_length"),
        F.percentile_approx("n_items", 0.5).alias("median_length"),
        F.min("n_items").alias("min_length"),
        F.max("n_items").alias("max_length"),
    ).first().asDict()
    items = table.select(F.explode("items")).distinct().count()
    users = row["users"]
    return {
        "run_id": ctx.run_id,
        "dataset": ctx.config.dataset.name,
        **row,
        "items": items,
        "density": row["interactions"] / (users * items) if users and items else 0.0,
        "short_users": n_short,
        "short_user_policy": ctx.config.sequences.short_users,
        "config_hash": ctx.config_hash,
    }
