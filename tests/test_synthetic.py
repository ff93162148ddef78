import dataclasses

import numpy as np
from pyspark.sql import functions as F

from tslrec.config import load_config
from tslrec.data.synthetic import build_catalog, generate_chunk, generate_events


def synthetic(**changes):
    return dataclasses.replace(load_config().synthetic, **changes)


def test_same_config_same_log_and_seed_changes_it(spark):
    cfg = synthetic(users=300, items=100, users_per_partition=70)
    first = generate_events(spark, cfg).orderBy("src_row").collect()
    assert first == generate_events(spark, cfg).orderBy("src_row").collect()
    assert first != generate_events(spark, dataclasses.replace(cfg, seed=7)).orderBy("src_row").collect()
    assert {r.user_id for r in first} == set(range(1, 301))
    per_user = generate_events(spark, cfg).groupBy("user_id").agg(
        F.count(F.lit(1)).alias("n"), F.min("timestamp").alias("t0"), F.countDistinct("timestamp").alias("times")
    )
    lengths = [r.n for r in per_user.collect()]
    assert min(lengths) >= 3 and max(lengths) <= cfg.max_length
    assert all(r.n == r.times for r in per_user.collect())  # strictly increasing times: the order is unambiguous


def test_logs_carry_the_planted_structure():
    cfg = synthetic(users=3000, items=400, categories=10, users_per_partition=3000)
    catalog = build_catalog(cfg)
    batch = generate_chunk(cfg, catalog, 0).to_pydict()
    users = np.array(batch["user_id"])
    items = np.array(batch["item_id"]) - 1
    assert abs(len(items) / cfg.users - cfg.mean_length) < 1.0
    categories = catalog.category[items]
    # users concentrate on few categories: their category entropy is far below that of the catalogue
    entropies = []
    for user in np.unique(users)[:500]:
        p = np.bincount(categories[users == user], minlength=cfg.categories) / (users == user).sum()
        entropies.append(-(p[p > 0] * np.log(p[p > 0])).sum())
    assert np.mean(entropies) < 0.6 * np.log(cfg.categories)
    # short-term transitions: the next item is one of the previous one's successors far more often than by chance
    same_user = users[1:] == users[:-1]
    follows = (catalog.successors[items[:-1]] == items[1:, None]).any(axis=1)[same_user].mean()
    assert follows > cfg.successor_probability * 0.8
    # skewed popularity: the top 10% of items take a large share of the events
    counts = np.sort(np.bincount(items, minlength=cfg.items))[::-1]
    assert counts[: cfg.items // 10].sum() / counts.sum() > 0.3
