"""User preferences: how a user's TRAINING items spread over the pre-groups (METHOD.md, Stage 1 step 2).

g_u[k] = number of the user's training items in group k; distribution = g_u / sum(g_u), which sums to 1.
Validation and test items never count. Users with no training item have no preference and get no row (the
number of such users, those of dataset_stats without a row, is logged). Computed in Spark, nothing is collected to
the driver.
"""

from __future__ import annotations

from pyspark.sql import functions as F

from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.lake import Written
from tslrec.logs import get_logger

log = get_logger(__name__)

STAGE = "preferences"


def run(ctx: RunContext) -> list[Written]:
    spark, lake, run_id = ctx.spark, ctx.lake, ctx.run_id
    sequences = lake.read_spark(spark, "user_sequences", where={"run_id": run_id})
    groups = lake.read_spark(spark, "item_pregroups", where={"run_id": run_id}).select("item_idx", "group")
    k = lake.read_arrow("item_pregroup_centres", where={"run_id": run_id}, columns=["group"]).num_rows
    if k == 0:
        raise TslrecError(f"item_pregroup_centres has no groups for run '{run_id}': run pregroup first")
    items = sequences.select("user_idx", F.explode("train_items").alias("item_idx"))
    joined = items.join(groups, "item_idx", "left")
    with ctx.progress("check every training item has a group"):
        ungrouped = joined.filter(F.col("group").isNull()).select("item_idx").distinct().limit(5).collect()
    if ungrouped:
        raise TslrecError(
            f"training items without a group in item_pregroups of run '{run_id}' (e.g. item_idx "
            f"{[r.item_idx for r in ungrouped]}): re-run pregroup after pretrain for this run"
        )
    counted = joined.groupBy("user_idx", "group").agg(F.count(F.lit(1)).alias("n"))
    per_user = counted.groupBy("user_idx").agg(F.map_from_entries(F.collect_list(F.struct("group", "n"))).alias("by_group"))
    counts = F.transform(F.sequence(F.lit(0), F.lit(k - 1)), lambda g: F.coalesce(F.col("by_group")[g], F.lit(0)).cast("int"))
    preferences = per_user.select(
        F.lit(run_id).alias("run_id"),
        F.lit(ctx.config.dataset.name).alias("dataset"),
        "user_idx",
        counts.alias("counts"),
    ).withColumn("n_items", F.aggregate("counts", F.lit(0), lambda acc, c: acc + c)).withColumn(
        "distribution", F.transform("counts", lambda c: c / F.col("n_items"))
    ).withColumn("k", F.lit(k))
    with ctx.progress("write user_preferences"):
        written = lake.write(preferences, "user_preferences", "replace_run", ctx.commit(STAGE))
    users = lake.read_arrow("dataset_stats", where={"run_id": run_id}, columns=["users"])["users"][0].as_py()
    without = users - written.rows  # the sequences stage's count of the table's users: no second pass over it
    log.info("%d users with a preference over %d groups; %d users without training items have none",
             written.rows, k, without)
    return [written]
