"""Pre-grouping: Spark MLlib k-means over the stage-0 item embeddings; group(v) is the item's latent category.

Writes item_pregroups (item_idx, group, distance to the group's centre) and item_pregroup_centres (group, centre,
size). Group sizes are logged; empty, tiny and dominant groups are warned about.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.ml.clustering import KMeans
from pyspark.ml.functions import array_to_vector
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.lake import Written
from tslrec.logs import get_logger

log = get_logger(__name__)

STAGE = "pregroup"
DOMINANT_SHARE = 0.5
TINY_SHARE = 0.05  # of an even split: such a group adds a preference dimension that almost no user has


def run(ctx: RunContext) -> list[Written]:
    settings = ctx.config.pregroup
    backbone = ctx.config.pretrain.backbone
    source = settings.embeddings_run or ctx.run_id
    commit = ctx.commit(STAGE)
    # The rows are read from Parquet and made vectors once, in a local checkpoint, for the six passes below (the
    # check, the spread, MLlib's three and the assignment). A checkpoint, not a cache: MLlib persists its own
    # vectors only when its input is not cached; given a cached DataFrame it converts every row to a vector again
    # in each iteration (4.5x slower at 83k items, benchmarks/RESULTS.md).
    embeddings = (
        ctx.lake.read_spark(ctx.spark, "srs_item_embeddings", where={"run_id": source})
        .filter(F.col("backbone") == backbone)
        .select("item_idx", F.col("vector").cast("array<double>").alias("vector"))
        .withColumn("features", array_to_vector("vector"))
        .localCheckpoint()
    )
    if embeddings.isEmpty():
        raise TslrecError(f"srs_item_embeddings has no {backbone} vectors for run '{source}': run pretrain first")
    items, spread = _count_and_spread(embeddings)
    tolerance = settings.relative_tolerance * spread
    if settings.k > items:
        raise TslrecError(f"pregroup.k={settings.k} is larger than the {items} items to group; choose k <= {items}")
    kmeans = KMeans(k=settings.k, initMode=settings.init, initSteps=settings.init_steps, seed=settings.seed,
                    maxIter=settings.max_iterations, tol=tolerance,
                    featuresCol="features", predictionCol="group")
    with ctx.progress(f"k-means, k={settings.k}, {items} items"):
        model = kmeans.fit(embeddings)
    centres = np.array(model.clusterCenters())
    summary = model.summary
    log.info("k-means: %d groups of %d items in %d iterations (centres moving less than %.3g, %g of the vectors' "
             "spread %.3g, end them), within-group sum of squares %.4g", len(centres), items, summary.numIter,
             tolerance, settings.relative_tolerance, spread, summary.trainingCost)
    centre_table = ctx.spark.createDataFrame(
        [(int(g), centres[g].tolist()) for g in range(len(centres))], "group int, centre array<double>"
    )
    assigned = model.transform(embeddings).select("item_idx", F.col("group").cast("int"), "vector")
    squared = F.zip_with("vector", "centre", lambda a, b: (a - b) * (a - b))
    pregroups = assigned.join(F.broadcast(centre_table), "group").select(
        F.lit(ctx.run_id).alias("run_id"),
        F.lit(ctx.config.dataset.name).alias("dataset"),
        "item_idx",
        "group",
        F.sqrt(F.aggregate(squared, F.lit(0.0), lambda acc, x: acc + x)).alias("distance"),
    )
    with ctx.progress("write item_pregroups"):
        written = ctx.lake.write(pregroups, "item_pregroups", "replace_run", commit)
    sizes = np.array(summary.clusterSizes)
    _report_sizes(sizes, items)
    centre_rows = pa.table({
        "run_id": [ctx.run_id] * len(centres),
        "dataset": [ctx.config.dataset.name] * len(centres),
        "group": pa.array(range(len(centres)), pa.int32()),
        "centre": [c.astype(np.float32).tolist() for c in centres],
        "size": pa.array(sizes, pa.int64()),
    })
    return [written, ctx.lake.write(centre_rows, "item_pregroup_centres", "replace_run", commit)]


def _count_and_spread(embeddings: DataFrame) -> tuple[int, float]:
    """The number of vectors (at least one) and their spread (the root of the mean per-dimension variance), in one
    Spark job.

    MLlib's tolerance is a distance, so it is set relative to the spread: the same setting then stops the
    iterations at the same precision whatever the embeddings' scale (scikit-learn scales its tolerance by the
    variance too)."""
    summary = embeddings.select(Summarizer.metrics("count", "variance").summary(F.col("features")).alias("s")).first()
    return int(summary["s"]["count"]), float(np.sqrt(np.mean(summary["s"]["variance"].toArray())))


def _report_sizes(sizes: np.ndarray, items: int) -> None:
    ordered = np.sort(sizes)
    log.info("group sizes: min %d, median %d, max %d (%s)", ordered[0], int(np.median(ordered)), ordered[-1],
             " ".join(str(s) for s in ordered[::-1]))
    empty = int((sizes == 0).sum())
    if empty:
        log.warning("%d of %d groups are empty: the embeddings have fewer distinct clusters than pregroup.k", empty, len(sizes))
    tiny = sizes[(sizes > 0) & (sizes < TINY_SHARE * items / len(sizes))]
    if len(tiny):
        log.warning("%d of %d groups hold fewer than %.0f items (%s): consider a smaller pregroup.k", len(tiny),
                    len(sizes), TINY_SHARE * items / len(sizes), " ".join(str(s) for s in np.sort(tiny)))
    if ordered[-1] > DOMINANT_SHARE * items:
        log.warning("one group holds %.0f%% of the items: the grouping is degenerate (check the stage-0 embeddings)",
                    100 * ordered[-1] / items)
