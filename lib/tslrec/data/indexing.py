"""Stable dense ids: `user_index` and `item_index` map a dataset's raw ids to 0..n-1 and only ever grow.

Ids already in the registry keep their number on every later run (new logs, a re-run, another run of the same
dataset), so item embeddings written by one run stay addressable by the next. New ids are numbered after the
largest existing one, in raw-id order (numeric for integer ids), so the same input always gets the same numbers.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from tslrec.context import RunContext
from tslrec.data.numbering import dense_rank_rows
from tslrec.errors import ConcurrentCommit, TslrecError
from tslrec.lake import BasedOn, Commit, Written
from tslrec.logs import get_logger

log = get_logger(__name__)

REGISTRY_ATTEMPTS = 5


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
    later runs with no new id write nothing, so they add no version. New ids are numbered from the registry as
    one version read it, and committed only as the version right after it: when another ingest committed in
    between (it may have handed out the same numbers), the ids are numbered again from the new version.
    """
    for attempt in range(1, REGISTRY_ATTEMPTS + 1):
        read_version = ctx.lake.version(registry.table) if ctx.lake.exists(registry.table) else None
        known, numbered, new_ids = _numbered(ctx, registry, ids, read_version)
        if read_version is not None and not new_ids:
            return known, None
        try:
            written = ctx.lake.write(numbered, registry.table, "append", commit, partition_by=("dataset",),
                                     based_on=BasedOn(read_version))
        except ConcurrentCommit as exc:
            log.warning("%s changed while its new ids were numbered (%s): numbering them again, attempt %d of %d",
                        registry.table, exc, attempt + 1, REGISTRY_ATTEMPTS)
            time.sleep(random.uniform(0.5, 2.0) * attempt)
            continue
        return known.unionByName(numbered.select(registry.key, registry.index)), written
    raise TslrecError(f"{registry.table}: other writers committed to it during each of {REGISTRY_ATTEMPTS} attempts "
                      f"to add this run's new ids; run the ingest again when the other ingests are done")


def _numbered(
    ctx: RunContext, registry: Registry, ids: DataFrame, version: int | None
) -> tuple[DataFrame, DataFrame, int]:
    """(the registry's ids of this dataset at `version`, the new ids numbered after them, how many are new).
    The largest known id comes from the registry files' statistics, not from a Spark job."""
    dataset = ctx.config.dataset
    spark = ctx.spark
    largest = None
    if version is not None:
        known = ctx.lake.read_spark(spark, registry.table, version=version, where={"dataset": dataset.name})
        known = known.select(registry.key, registry.index)
        largest = ctx.lake.column_max(registry.table, registry.index, version, {"dataset": dataset.name})
    else:
        known = spark.createDataFrame([], f"{registry.key} string, {registry.index} int")
    start = 0 if largest is None else largest + 1
    fresh = ids.distinct().join(known.select(registry.key), registry.key, "left_anti")
    order = F.col(registry.key).cast("long") if dataset.id_type == "int" else F.col(registry.key)
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    numbered, new_ids = dense_rank_rows(fresh, order, registry.index, start, partitions)
    numbered = numbered.select(
        F.lit(dataset.name).alias("dataset"),
        registry.key,
        F.col(registry.index).cast("int").alias(registry.index),
        F.lit(ctx.run_id).alias("first_run_id"),
    )
    return known, numbered, new_ids
