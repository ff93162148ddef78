"""pregroup + preferences on Spark beside a single-node version (scikit-learn k-means, NumPy counting).

    .venv/bin/python benchmarks/grouping.py                 # synthetic 1M / 10M / 50M interactions, 100k items
    .venv/bin/python benchmarks/grouping.py --sizes 1M
    .venv/bin/python benchmarks/grouping.py --items 12101 83219   # pre-grouping alone, Beauty's item count and 1M's
    .venv/bin/python benchmarks/grouping.py --sizes 50M --reuse   # the lake of an earlier run of this size: no data stage

For each size the data stage builds user_sequences from the synthetic log (timed apart), item vectors (64 floats,
32 planted clusters plus noise) are written as srs_item_embeddings, then both stages run on Spark and the same
work runs on one node: k-means with k-means++ init, the same k and iterations (scikit-learn's default
tolerance, relative to the variance as tslrec's is); each user's counts per group over the training items,
normalised, written as Parquet.

With --items, only the pre-grouping runs, on that many vectors (no data stage): twice on Spark (the first run pays
for MLlib's first use in the process), once with scikit-learn, and the within-group sum of squares of each, read
back from the written item_pregroups. With PYTHONPATH (and TSLREC_CONF_DIR) at another revision's lib/ (and conf/),
the same benchmark measures that revision's stage code. With --reuse, each size's lake is kept in --work and a
later run reuses it (user_sequences as they are, the data stage not run again): two revisions' stages then run on
the same rows without paying for the data stage twice (12 minutes at 50M on 2 cores).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.cluster import KMeans

from data_stage import SIZES, machine, start, synthetic_log
from tslrec.config import load_config
from tslrec.context import RunContext
from tslrec.grouping import preferences, pregroup
from tslrec.lake import Commit
from tslrec.pipeline import run_stages, select_stages

DIM, CLUSTERS = 64, 32


def item_vectors(n_items: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLUSTERS, DIM))
    return (centres[rng.integers(0, CLUSTERS, n_items)] + 0.5 * rng.normal(size=(n_items, DIM))).astype(np.float32)


def write_item_vectors(ctx: RunContext, n_items: int) -> np.ndarray:
    """As the run's srs_item_embeddings, the stage-0 vectors the pre-grouping reads."""
    vectors = item_vectors(n_items)
    ctx.lake.write(pa.table({
        "run_id": [ctx.run_id] * n_items, "dataset": ["synth"] * n_items, "backbone": ["sasrec"] * n_items,
        "item_idx": pa.array(range(n_items), pa.int32()), "vector": list(vectors),
    }), "srs_item_embeddings", "replace_run", Commit(ctx.run_id, "benchmark", ctx.config_hash))
    return vectors


def single_node(ctx: RunContext, vectors: np.ndarray, out: Path) -> tuple[float, float]:
    settings = ctx.config.pregroup
    started = time.monotonic()
    groups = KMeans(n_clusters=settings.k, init="k-means++", n_init=1, max_iter=settings.max_iterations,
                    random_state=settings.seed).fit_predict(vectors)
    kmeans_s = time.monotonic() - started
    started = time.monotonic()
    train = ctx.lake.read_arrow("user_sequences", columns=["user_idx", "train_items"])["train_items"].combine_chunks()
    counts_per_user = np.diff(train.offsets.to_numpy())
    owner = np.repeat(np.arange(len(counts_per_user)), counts_per_user)
    counts = np.bincount(owner * settings.k + groups[train.flatten().to_numpy()],
                         minlength=len(counts_per_user) * settings.k).reshape(-1, settings.k)
    distribution = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    pq.write_table(pa.table({"counts": list(counts), "distribution": list(distribution)}), out)
    return kmeans_s, time.monotonic() - started


def pregroup_only(args: argparse.Namespace, overrides: list[str]) -> None:
    rows = []
    for n_items in args.items:
        lake = args.work / "pregroup-lake"
        shutil.rmtree(lake, ignore_errors=True)
        ctx = RunContext(load_config(overrides=[*overrides, f"lake.root={lake}", "dataset.name=synth"]))
        vectors = write_item_vectors(ctx, n_items)
        seconds = []
        for _ in range(2):
            started = time.monotonic()
            pregroup.run(ctx)
            seconds.append(time.monotonic() - started)
        distances = ctx.lake.read_arrow("item_pregroups", columns=["distance"])["distance"].to_numpy()
        settings = ctx.config.pregroup
        started = time.monotonic()
        single = KMeans(n_clusters=settings.k, init="k-means++", n_init=1, max_iter=settings.max_iterations,
                        random_state=settings.seed).fit(vectors)
        rows.append((n_items, *seconds, float((distances ** 2).sum()), time.monotonic() - started, single.inertia_))
        print(rows[-1], flush=True)
    print("\n| items | Spark pregroup s (first in the process) | Spark pregroup s (again) | Spark within-group SS "
          "| scikit-learn k-means s | scikit-learn within-group SS |\n|---|---|---|---|---|---|")
    for n_items, first, again, cost, km_s, km_cost in rows:
        print(f"| {n_items:,} | {first:.1f} | {again:.1f} | {cost:.6g} | {km_s:.1f} | {km_cost:.6g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--items", nargs="*", type=int, default=[],
                        help="pre-grouping alone on this many synthetic item vectors each (no data stage)")
    parser.add_argument("--reuse", action="store_true", help="keep each size's lake and reuse it in a later run")
    args, overrides, spark = start(parser, [f"pregroup.k={CLUSTERS}"])
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: {machine()}; Spark {spark.version} on {spark.sparkContext.master}; k={CLUSTERS}, {DIM}-d vectors; "
          f"tslrec from {Path(pregroup.__file__).parents[2]}")
    if args.items:
        pregroup_only(args, overrides)
        return
    results = []
    for label in args.sizes:
        path, _ = synthetic_log(args.work, label, SIZES[label], overrides)
        lake = args.work / (f"grouping-lake-{label}" if args.reuse else "grouping-lake")
        reused = args.reuse and (lake / "user_sequences").exists()
        if not reused:
            shutil.rmtree(lake, ignore_errors=True)
        ctx = RunContext(load_config(overrides=[*overrides, f"lake.root={lake}", "dataset.format=parquet",
                                                f"dataset.path={path}", "dataset.name=synth"]))
        started = time.monotonic()
        if not reused:
            run_stages(ctx, select_stages(until="sequences"))
        data_s = None if reused else time.monotonic() - started
        n_items = ctx.lake.read_arrow("item_index", columns=["item_idx"]).num_rows
        vectors = write_item_vectors(ctx, n_items)
        timings = {}
        for stage in (pregroup, preferences):
            started = time.monotonic()
            stage.run(ctx)
            timings[stage.STAGE] = time.monotonic() - started
        stats = ctx.lake.read_arrow("dataset_stats").to_pylist()[0]
        kmeans_s, counting_s = single_node(ctx, vectors, args.work / "preferences-single-node.parquet")
        results.append((label, stats["interactions"], stats["users"], n_items, data_s, timings["pregroup"],
                        timings["preferences"], kmeans_s, counting_s))
        print(results[-1], flush=True)

    print("\n| case | interactions | users | items | data stage s | Spark pregroup s | Spark preferences s "
          "| scikit-learn k-means s | NumPy preferences s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, inter, users, items, data_s, pre_s, pref_s, km_s, cnt_s in results:
        data = "reused" if data_s is None else f"{data_s:.1f}"
        print(f"| synthetic {label} | {inter:,} | {users:,} | {items:,} | {data} | {pre_s:.1f} | {pref_s:.1f} "
              f"| {km_s:.1f} | {cnt_s:.1f} |")
    for small, large in zip(results, results[1:]):
        growth = large[1] / small[1]
        print(f"{small[0]} -> {large[0]} (x{growth:.1f} interactions): Spark pregroup x{large[5] / small[5]:.1f}, "
              f"preferences x{large[6] / small[6]:.1f}")


if __name__ == "__main__":
    main()
