"""The embedded default dataset: interaction logs with structure a recommender (and the LLM) can learn.

Items belong to planted latent categories and have Zipf popularity inside their category. Each user prefers a
few categories (a sparse Dirichlet draw); the next item either follows one of the previous item's successors
(short-term transitions), stays in the current category, moves to a neighbouring category, or is drawn from the
user's preferences. Users are generated in chunks, one Spark task per chunk, each seeded by (seed, chunk), so the
same config gives the same log at any scale and on any number of executors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from tslrec.config import SyntheticSection

_START = 1_577_836_800  # 2020-01-01 UTC
_EVENT_SCHEMA = "src_file string, src_row long, user_id long, item_id long, timestamp long"


@dataclass(frozen=True)
class Catalog:
    category: np.ndarray  # (items,) planted category of each item
    by_category: np.ndarray  # item ids sorted by category
    cdf: np.ndarray  # category + cumulative popularity inside it, aligned with by_category
    successors: np.ndarray  # (items, successors_per_item)
    neighbours: np.ndarray  # (categories, 2)


def build_catalog(cfg: SyntheticSection) -> Catalog:
    rng = np.random.default_rng([cfg.seed, 0])
    n, c = cfg.items, cfg.categories
    category = rng.permutation(n) % c
    by_category = np.lexsort((rng.random(n), category))
    sorted_category = category[by_category]
    starts = np.searchsorted(sorted_category, np.arange(c))
    rank = np.arange(n) - starts[sorted_category]
    weight = 1.0 / (rank + 1.0) ** cfg.popularity_exponent
    totals = np.bincount(sorted_category, weights=weight, minlength=c)
    cumulative = np.cumsum(weight) - np.concatenate([[0.0], np.cumsum(totals)[:-1]])[sorted_category]
    cdf = sorted_category + cumulative / totals[sorted_category]
    catalog = Catalog(category, by_category, cdf, np.empty((n, 0), dtype=np.int64), np.empty((c, 2), dtype=np.int64))
    successors = _sample_items(catalog, np.repeat(category, cfg.successors_per_item), rng)
    neighbours = np.stack([(np.arange(c) + 1) % c, rng.integers(0, c, c)], axis=1)
    return Catalog(category, by_category, cdf, successors.reshape(n, cfg.successors_per_item), neighbours)


def _sample_items(catalog: Catalog, categories: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One popularity-weighted item of each given category, for all of them at once."""
    position = np.searchsorted(catalog.cdf, categories + rng.random(len(categories)), side="right")
    position = np.minimum(position, len(catalog.cdf) - 1)
    return catalog.by_category[position]


def generate_chunk(cfg: SyntheticSection, catalog: Catalog, chunk: int) -> pa.RecordBatch:
    """All events of the users of one chunk: time steps are simulated for every user of the chunk together."""
    first = chunk * cfg.users_per_partition
    users = min(cfg.users_per_partition, cfg.users - first)
    rng = np.random.default_rng([cfg.seed, 1, chunk])
    preferences = rng.dirichlet(np.full(cfg.categories, cfg.preference_concentration), size=users).cumsum(axis=1)
    lengths = np.minimum(cfg.max_length, 2 + rng.geometric(1.0 / (cfg.mean_length - 2.0), size=users))
    steps = int(lengths.max())

    def preferred() -> np.ndarray:
        draws = rng.random(users)[:, None]
        return np.minimum((draws > preferences).sum(axis=1), cfg.categories - 1)

    items = np.empty((users, steps), dtype=np.int64)
    current = _sample_items(catalog, preferred(), rng)
    items[:, 0] = current
    for step in range(1, steps):
        category = catalog.category[current]
        neighbour = catalog.neighbours[category, rng.integers(0, 2, users)]
        moved = np.where(rng.random(users) < 0.5, neighbour, preferred())
        category = np.where(rng.random(users) < cfg.stay_probability, category, moved)
        successor = catalog.successors[current, rng.integers(0, cfg.successors_per_item, users)]
        follow = rng.random(users) < cfg.successor_probability
        current = np.where(follow, successor, _sample_items(catalog, category, rng))
        items[:, step] = current
    gaps = rng.exponential(86_400.0, size=(users, steps)).astype(np.int64) + 1
    times = _START + rng.integers(0, 365 * 86_400, size=users)[:, None] + np.cumsum(gaps, axis=1)
    active = np.arange(steps)[None, :] < lengths[:, None]
    user_ids = np.broadcast_to(np.arange(first, first + users)[:, None] + 1, (users, steps))[active]
    positions = np.broadcast_to(np.arange(steps)[None, :], (users, steps))[active]
    return pa.RecordBatch.from_pydict(
        {
            "src_file": pa.array(np.full(len(user_ids), "synthetic"), pa.string()),
            "src_row": (user_ids - 1) * cfg.max_length + positions + 1,
            "user_id": user_ids,
            "item_id": items[active] + 1,
            "timestamp": times[active],
        }
    )


def chunk_count(cfg: SyntheticSection) -> int:
    return -(-cfg.users // cfg.users_per_partition)


def generate_events(spark: SparkSession, cfg: SyntheticSection) -> DataFrame:
    """The event log as a Spark DataFrame: src_file, src_row, user_id, item_id, timestamp (a Spark timestamp)."""
    catalog = build_catalog(cfg)

    def chunks(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for chunk in batch.column("id").to_pylist():
                yield generate_chunk(cfg, catalog, chunk)

    n = chunk_count(cfg)
    events = spark.range(0, n, numPartitions=n).mapInArrow(chunks, _EVENT_SCHEMA)
    return events.withColumn("timestamp", F.timestamp_seconds("timestamp"))


def planted_categories(cfg: SyntheticSection) -> pa.Table:
    """The ground truth a pre-grouping can be compared with: raw item id -> planted category."""
    category = build_catalog(cfg).category
    return pa.table({"item_id": pa.array((np.arange(cfg.items) + 1).astype(str)), "category": category.astype(np.int32)})
