"""User preferences: how a user's TRAINING items spread over the pre-groups (METHOD.md, Stage 1 step 2).

g_u[k] = number of the user's training items in group k; distribution = g_u / sum(g_u), which sums to 1.
Validation and test items never count. Users with no training item have no preference and get no row (the
number of such users, those of dataset_stats without a row, is logged). Computed in Spark, nothing is collected to
the driver.
"""

from __future__ import annotations

import re

from pyspark.sql import functions as F

from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.lake import Written
from tslrec.logs import get_logger

log = get_logger(__name__)

STAGE = "preferences"
UNGROUPED = "training items without a group"


def run(ctx: RunContext) -> list[Written]:
    spark, lake, run_id = ctx.spark, ctx.lake, ctx.run_id
    sequences = lake.read_spark(spark, "user_sequences", where={"run_id": run_id})
    groups = lake.read_spark(spark, "item_pregroups", where={"run_id": run_id}).select("item_idx", "group")
    k = lake.read_arrow("item_pregroup_centres", where={"run_id": run_id}, columns=["group"]).num_rows
    if k == 0:
        raise TslrecError(f"item_pregroup_centres has no groups for run '{run_id}': run pregroup first")
    items = sequences.select("user_idx", F.explode("train_items").alias("item_idx"))
    joined = items.join(F.broadcast(groups), "item_idx", "left")
    ungrouped = F.col("group").isNull()
    # one aggregation by user (one shuffle) that counts the groups (k comparisons an item) and the items without one
    per_user = joined.groupBy("user_idx").agg(
        F.array(*[F.count(F.when(F.col("group") == g, True)) for g in range(k)]).alias("counts"),
        F.count("group").alias("n_items"),
        F.count(F.when(ungrouped, True)).alias("ungrouped"),
        F.min(F.when(ungrouped, F.col("item_idx"))).alias("an_ungrouped_item"),
    )
    # a user with an item without a group fails the write's job, so the table keeps its previous version
    refusal = F.raise_error(F.format_string(
        f"user_idx %d has %d {UNGROUPED} in item_pregroups of run '{run_id}' (e.g. item_idx %d): re-run "
        f"pregroup after pretrain for this run", "user_idx", "ungrouped", "an_ungrouped_item"))
    preferences = per_user.select(
        F.lit(run_id).alias("run_id"),
        F.lit(ctx.config.dataset.name).alias("dataset"),
        "user_idx",
        F.col("counts").cast("array<int>").alias("counts"),
        F.when(F.col("ungrouped") > 0, refusal).otherwise(F.col("n_items")).cast("int").alias("n_items"),
    ).withColumn("distribution", F.transform("counts", lambda c: c / F.col("n_items"))).withColumn("k", F.lit(k))
    with ctx.progress("write user_preferences"):
        try:
            written = lake.write(preferences, "user_preferences", "replace_run", ctx.commit(STAGE))
        except Exception as error:  # Spark's error from the failed job, with the refusal's text in it
            refused = re.search(rf"user_idx \d+ has \d+ {UNGROUPED}.*?for this run", str(error))
            if refused is None:
                raise
            raise TslrecError(refused.group(0)) from None
    users = lake.read_arrow("dataset_stats", where={"run_id": run_id}, columns=["users"])["users"][0].as_py()
    without = users - written.rows  # the sequences stage's count of the table's users: no second pass over it
    log.info("%d users with a preference over %d groups; %d users without training items have none",
             written.rows, k, without)
    return [written]
