"""Dense, ordered row numbers without moving the rows to one place.

Rows that sit in contiguous blocks (a file split, a range partition) are counted per block, the driver sums the
block counts in block order (one number per block), and each row gets its block's offset plus its place inside it.
"""

from __future__ import annotations

from typing import Sequence

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

_MID, _FIRST, _BEFORE, _PART = "_tslrec_mid", "_tslrec_first", "_tslrec_before", "_tslrec_part"


def number_blocks(
    df: DataFrame, *, group: Sequence[str], block: str, column: str, start: int
) -> tuple[DataFrame, dict[tuple, int]]:
    """Numbers rows from `start` within each `group`, ordered by `block`, then by their order inside the block;
    and how many rows each group has (group values -> rows), which the block counts give for free.

    Each (group, block) must be one contiguous run of rows inside one Spark partition, and `df` must give the same
    rows in the same order each time it is evaluated (a file scan, or a persisted frame). Only the per-block counts
    (one row per file split or partition) come to the driver.
    """
    df = df.withColumn(_MID, F.monotonically_increasing_id())
    counts = df.groupBy(*group, block).agg(F.min(_MID).alias(_FIRST), F.count(F.lit(1)).alias("_n")).collect()
    offsets, before = [], {}
    for row in sorted(counts, key=lambda r: tuple(r)[: len(group) + 1]):
        key = tuple(row[g] for g in group)
        offsets.append((*key, row[block], row[_FIRST], before.get(key, 0)))
        before[key] = before.get(key, 0) + row["_n"]
    schema = T.StructType(
        [df.schema[c] for c in (*group, block)]
        + [T.StructField(_FIRST, T.LongType()), T.StructField(_BEFORE, T.LongType())]
    )
    blocks = df.sparkSession.createDataFrame(offsets, schema)
    numbered = df.join(F.broadcast(blocks), [*group, block])
    numbered = numbered.withColumn(column, F.col(_BEFORE) + F.col(_MID) - F.col(_FIRST) + F.lit(start))
    return numbered.drop(_MID, _FIRST, _BEFORE), before


def rank_rows(
    df: DataFrame, group: Sequence[str], order: Column, column: str, partitions: int
) -> tuple[DataFrame, dict[tuple, int]]:
    """Gives each row of `df` a distinct number 0, 1, ... within its `group`, in `order` (ties broken
    arbitrarily but stably); and the number of rows of each group. One range partitioning, one count."""
    keys = [F.col(g) for g in group]
    ordered = (
        df.repartitionByRange(partitions, *keys, order)
        .sortWithinPartitions(*keys, order)
        .withColumn(_PART, F.spark_partition_id())
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    numbered, rows = number_blocks(ordered, group=group, block=_PART, column=column, start=0)
    return numbered.drop(_PART), rows
