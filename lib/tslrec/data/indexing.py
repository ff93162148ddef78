"""Stable dense ids: `user_index` and `item_index` map a dataset's raw ids to 0..n-1 and only ever grow.

Ids already in the registry keep their number on every later run (new logs, a re-run, another run of the same
dataset), so item embeddings written by one run stay addressable by the next. New ids are numbered after the
largest existing one, in raw-id order (numeric for integer ids), so the same input always gets the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from tslrec.context import RunContext
from tslrec.data.numbering import dense_rank_rows
from tslrec.lake import Commit, Written


@dataclass(frozen=True)
class Registry:
    table: str  # user_index | item_index
    key: str  # raw id column: user_id | item_id
    index: str  # dense id column: user_idx | item_idx


USERS = Registry("user_index", "user_id", "user_idx")
ITEMS = Registry("item_index", "item_id", "item_idx")


def resolve(ctx: RunContext, registry: Registry, ids: DataFrame, commit: Commit) -> tuple[DataFrame, Written | None]:
    """Returns (raw id -> dense id for every id of `ids`, the registry write or None when no id was new).

    `ids` has one column named registry.key. The first run creates the registry (empty if no record was valid);
    later runs with no new id write nothing, so they add no version.
    """
    dataset = ctx.config.dataset
    spark = ctx.spark
    where = {"dataset": dataset.name}
    if ctx.lake.exists(registry.table):
        known = ctx.lake.read_spark(spark, registry.table, where=where).select(registry.key, registry.index)
    else:
        known = spark.createDataFrame([], f"{registry.key} string, {registry.index} int")
    start = known.agg(F.max(registry.index)).first()[0]
    start = 0 if start is None else start + 1
    fresh = ids.distinct().join(known.select(registry.key), registry.key, "left_anti")
    order = F.col(registry.key).cast("long") if dataset.id_type == "int" else F.col(registry.key)
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    numbered = dense_rank_rows(fresh, order, registry.index, start, partitions).select(
        F.lit(dataset.name).alias("dataset"),
        registry.key,
        F.col(registry.index).cast("int").alias(registry.index),
        F.lit(ctx.run_id).alias("first_run_id"),
    )
    written = None
    if numbered.count() or not ctx.lake.exists(registry.table):
        written = ctx.lake.write(numbered, registry.table, "append", commit, partition_by=("dataset",))
    return known.unionByName(numbered.select(registry.key, registry.index)), written
