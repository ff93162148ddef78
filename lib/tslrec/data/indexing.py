"""Stable dense ids: `user_index` and `item_index` map a dataset's raw ids to 0..n-1 and only ever grow.

Ids already in the registry keep their number on every later run (new logs, a re-run, another run of the same
dataset), so item embeddings written by one run stay addressable by the next. New ids are numbered after the
largest existing one, in raw-id order (numeric for integer ids), so the same input always gets the same numbers.
Both registries are resolved in one pass: one distinct, one lookup of the known ids, one range partitioning and one
count serve users and items, and the counts of that pass are the run's distinct users and items as well.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from tslrec.context import RunContext
from tslrec.data.numbering import rank_rows
from tslrec.errors import ConcurrentCommit, TslrecError
from tslrec.lake import BasedOn, Commit, Written
from tslrec.logs import get_logger
from tslrec.spark import shuffle_partitions

log = get_logger(__name__)

REGISTRY_ATTEMPTS = 5
_REGISTRY, _ID, _IDX, _NEW, _RANK = "_registry", "_id", "_idx", "_new", "_rank"


@dataclass(frozen=True)
class Registry:
    table: str  # user_index | item_index
    key: str  # raw id column: user_id | item_id
    index: str  # dense id column: user_idx | item_idx


USERS = Registry("user_index", "user_id", "user_idx")
ITEMS = Registry("item_index", "item_id", "item_idx")


@dataclass(frozen=True)
class Resolved:
    """One registry's part of the run: raw id -> dense id of each of the run's ids, how many distinct ids the run
    has, and the registry write (None when no id was new)."""

    ids: DataFrame
    distinct: int
    written: Written | None


def resolve(ctx: RunContext, events: DataFrame, commit: Commit) -> tuple[Resolved, Resolved]:
    """(users, items) of `events` (columns `user`, `item`). The first run creates a registry (empty if no record
    was valid); later runs with no new id write nothing to it, so they add no version. New ids are numbered from
    the registry as one version read it, and committed only as the version right after it: when another ingest
    committed in between (it may have handed out the same numbers), that registry's ids are numbered again from
    the new version."""
    pending = {USERS: F.col("user"), ITEMS: F.col("item")}
    resolved: dict[Registry, Resolved] = {}
    for attempt in range(1, REGISTRY_ATTEMPTS + 1):
        versions = {r: ctx.lake.version(r.table) if ctx.lake.exists(r.table) else None for r in pending}
        ranked, counts = _ranked(ctx, events, pending, versions)
        for registry in list(pending):
            distinct = counts.get((registry.table, False), 0) + counts.get((registry.table, True), 0)
            mine = ranked.filter(F.col(_REGISTRY) == registry.table)
            ids = mine.select(F.col(_ID).alias(registry.key), F.col(_IDX).cast("int").alias(registry.index))
            if versions[registry] is not None and not counts.get((registry.table, True)):
                resolved[registry] = Resolved(ids, distinct, None)
                del pending[registry]
                continue
            new = mine.filter(F.col(_NEW)).select(
                F.lit(ctx.config.dataset.name).alias("dataset"),
                F.col(_ID).alias(registry.key),
                F.col(_IDX).cast("int").alias(registry.index),
                F.lit(ctx.run_id).alias("first_run_id"),
            )
            try:
                written = ctx.lake.write(new, registry.table, "append", commit, partition_by=("dataset",),
                                         based_on=BasedOn(versions[registry]))
            except ConcurrentCommit as exc:
                log.warning("%s changed while its new ids were numbered (%s): numbering them again, attempt %d of %d",
                            registry.table, exc, attempt + 1, REGISTRY_ATTEMPTS)
                continue
            resolved[registry] = Resolved(ids, distinct, written)
            del pending[registry]
        if not pending:
            return resolved[USERS], resolved[ITEMS]
        time.sleep(random.uniform(0.5, 2.0) * attempt)
    names = " and ".join(r.table for r in pending)
    raise TslrecError(f"{names}: other writers committed to it during each of {REGISTRY_ATTEMPTS} attempts "
                      f"to add this run's new ids; run the ingest again when the other ingests are done")


def _ranked(
    ctx: RunContext, events: DataFrame, pending: dict[Registry, Column], versions: dict[Registry, int | None]
) -> tuple[DataFrame, dict[tuple, int]]:
    """The run's distinct ids of the pending registries (_registry, _id, _new, _idx): known ids with their number
    at the read version, new ids numbered after the largest known one in raw-id order; and the ids per
    (registry, new). The largest known id comes from the registry files' statistics, not from a Spark job."""
    dataset = ctx.config.dataset
    spark = ctx.spark
    run_ids = functools.reduce(DataFrame.unionByName, [
        events.select(F.lit(r.table).alias(_REGISTRY), column.alias(_ID)) for r, column in pending.items()])
    known_frames, starts = [], {}
    for registry, version in versions.items():
        starts[registry.table] = 0
        if version is None:
            continue
        known = ctx.lake.read_spark(spark, registry.table, version=version, where={"dataset": dataset.name})
        known_frames.append(known.select(F.lit(registry.table).alias(_REGISTRY), F.col(registry.key).alias(_ID),
                                         F.col(registry.index).alias(_IDX)))
        largest = ctx.lake.column_max(registry.table, registry.index, version, {"dataset": dataset.name})
        starts[registry.table] = 0 if largest is None else largest + 1
    ids = run_ids.distinct()
    if known_frames:
        ids = ids.join(functools.reduce(DataFrame.unionByName, known_frames), [_REGISTRY, _ID], "left")
    else:
        ids = ids.withColumn(_IDX, F.lit(None).cast("int"))
    ids = ids.withColumn(_NEW, F.col(_IDX).isNull())
    order = F.col(_ID).cast("long") if dataset.id_type == "int" else F.col(_ID)
    ranked, counts = rank_rows(ids, [_REGISTRY, _NEW], order, _RANK, shuffle_partitions(spark))
    start = F.create_map(*[F.lit(v) for pair in starts.items() for v in pair])[F.col(_REGISTRY)]
    ranked = ranked.withColumn(_IDX, F.when(F.col(_NEW), start + F.col(_RANK)).otherwise(F.col(_IDX))).drop(_RANK)
    return ranked, counts
