"""Pre-grouping with Spark MLlib k-means and the user preference distributions, on real Spark and Delta."""

import logging
import random
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import normalized_mutual_info_score

from tslrec.config import load_config
from tslrec.context import RunContext
from tslrec.data import ingest, sequences
from tslrec.errors import TslrecError
from tslrec.grouping import pregroup, preferences
from tslrec.grouping.pregroup import _report_sizes
from tslrec.grouping.recovery import normalized_mutual_information
from tslrec.lake import Commit
from tslrec.srs.data import load_sequences
from tslrec.srs.train import train_model

from conftest import TEST_SPARK

ITEMS, CLUSTERS = 24, 3


@pytest.fixture(scope="module")
def base_overrides(spark, tmp_path_factory):
    """80 users over 24 items (raw ids 1..24) and planted item vectors: three tight, far-apart clusters."""
    folder = tmp_path_factory.mktemp("groups")
    rng = random.Random(1)
    lines = [" ".join(str(x) for x in [u] + rng.sample(range(1, ITEMS + 1), rng.randint(3, 10))) for u in range(1, 81)]
    (folder / "log.txt").write_text("\n".join(lines) + "\n")
    overrides = [*TEST_SPARK, f"lake.root={folder / 'lake'}", "dataset.format=user_items", "dataset.name=groups",
                 f"dataset.path={folder / 'log.txt'}", f"pregroup.k={CLUSTERS}", "pregroup.seed=7"]
    ctx = RunContext(load_config(overrides=overrides))
    ingest.run(ctx)
    sequences.run(ctx)
    centres = np.random.default_rng(0).normal(scale=10.0, size=(CLUSTERS, 8))
    planted = np.arange(ITEMS) % CLUSTERS
    vectors = centres[planted] + np.random.default_rng(1).normal(scale=0.1, size=(ITEMS, 8))
    table = pa.table({"run_id": ["groups"] * ITEMS, "dataset": ["groups"] * ITEMS, "backbone": ["sasrec"] * ITEMS,
                      "item_idx": pa.array(range(ITEMS), pa.int32()),
                      "vector": [v.astype(np.float32).tolist() for v in vectors]})
    ctx.lake.write(table, "srs_item_embeddings", "replace_run", Commit("groups", "test", "h"))
    return overrides, planted, vectors


def context(base_overrides, *extra):
    return RunContext(load_config(overrides=[*base_overrides[0], *extra]))


def grouping(ctx):
    rows = ctx.lake.read_arrow("item_pregroups", where={"run_id": ctx.run_id}).to_pylist()
    return {r["item_idx"]: (r["group"], r["distance"]) for r in rows}


def test_kmeans_recovers_planted_groups_with_distances(base_overrides):
    _, planted, vectors = base_overrides
    ctx = context(base_overrides)
    written = {w.table: w for w in pregroup.run(ctx)}
    assert written["item_pregroups"].rows == ITEMS
    groups = grouping(ctx)
    found = np.array([groups[i][0] for i in range(ITEMS)])
    # the same partition as the planted one, whatever the numbering
    assert len({(p, f) for p, f in zip(planted, found)}) == CLUSTERS
    centres = ctx.lake.read_arrow("item_pregroup_centres").to_pylist()
    assert sorted(c["size"] for c in centres) == [ITEMS // CLUSTERS] * CLUSTERS
    centre = {c["group"]: np.array(c["centre"]) for c in centres}
    for item, (group, distance) in groups.items():
        assert distance == pytest.approx(np.linalg.norm(vectors[item] - centre[group]), rel=1e-4)


def test_normalized_mutual_information_matches_scikit_learn():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 12, 500)
    assert normalized_mutual_information(truth, (truth * 7 + 3) % 12) == pytest.approx(1.0)  # renamed groups
    noisy = np.where(rng.random(500) < 0.3, rng.integers(0, 9, 500), truth)
    for found in (noisy, rng.integers(0, 12, 500), np.zeros(500, int)):
        assert normalized_mutual_information(truth, found) == pytest.approx(normalized_mutual_info_score(truth, found), abs=1e-12)
    assert normalized_mutual_information(truth, rng.integers(0, 12, 500)) < 0.05


def test_same_seed_same_groups_and_rerun_replaces(base_overrides):
    ctx = context(base_overrides, "pregroup.k=5", "pregroup.init=random")
    pregroup.run(ctx)
    first = grouping(ctx)
    version = ctx.lake.version("item_pregroups")
    pregroup.run(ctx)
    assert grouping(ctx) == first
    assert ctx.lake.version("item_pregroups") == version + 1
    assert ctx.lake.read_arrow("item_pregroups", where={"run_id": "groups"}).num_rows == ITEMS


def test_the_tolerance_is_relative_to_the_vectors_spread(base_overrides, caplog):
    """The same vectors at 1,000 times the scale: the same groups in as many iterations, the tolerance scaled."""
    _, _, vectors = base_overrides
    caplog.set_level(logging.INFO)
    found = {}
    for run, scale in (("unit", 1.0), ("scaled", 1000.0)):
        ctx = context(base_overrides, f"run.id={run}", "pregroup.k=5", "pregroup.init=random")
        ctx.lake.write(pa.table({
            "run_id": [run] * ITEMS, "dataset": ["groups"] * ITEMS, "backbone": ["sasrec"] * ITEMS,
            "item_idx": pa.array(range(ITEMS), pa.int32()),
            "vector": [(v * scale).astype(np.float32).tolist() for v in vectors]}),
            "srs_item_embeddings", "replace_run", Commit(run, "test", "h"))
        caplog.clear()
        pregroup.run(ctx)
        spread = np.sqrt((vectors.astype(np.float32).astype(np.float64) * scale).var(axis=0, ddof=1).mean())
        logged = re.search(r"in (\d+) iterations \(centres moving less than (\S+), 0.03 of the vectors' spread (\S+),",
                           caplog.text)
        assert float(logged.group(3)) == pytest.approx(spread, rel=1e-3)
        assert float(logged.group(2)) == pytest.approx(0.03 * spread, rel=1e-3)
        found[run] = (logged.group(1), {item: group for item, (group, _) in grouping(ctx).items()})
    assert found["unit"] == found["scaled"]


def test_no_vectors_is_refused(base_overrides):
    ctx = context(base_overrides, "pregroup.embeddings_run=nothing")
    with pytest.raises(TslrecError, match="srs_item_embeddings has no sasrec vectors for run 'nothing': run pretrain"):
        pregroup.run(ctx)


def test_k_larger_than_the_items_is_refused(base_overrides):
    ctx = context(base_overrides, f"pregroup.k={ITEMS + 1}")
    with pytest.raises(TslrecError, match=f"pregroup.k={ITEMS + 1} is larger than the {ITEMS} items to group"):
        pregroup.run(ctx)


def test_preferences_match_a_reference_and_ignore_valid_and_test(base_overrides, caplog):
    ctx = context(base_overrides)
    pregroup.run(ctx)
    with caplog.at_level("INFO"):
        written = preferences.run(ctx)
    groups = {item: g for item, (g, _) in grouping(ctx).items()}
    rows = {r["user_idx"]: r for r in ctx.lake.read_arrow("user_preferences", where={"run_id": "groups"}).to_pylist()}
    held_out_only = 0
    for user in ctx.lake.read_arrow("user_sequences", where={"run_id": "groups"}).to_pylist():
        counts = Counter(groups[i] for i in user["train_items"])
        expected = [counts.get(g, 0) for g in range(CLUSTERS)]
        row = rows[user["user_idx"]]
        assert row["counts"] == expected and row["n_items"] == len(user["train_items"]) and row["k"] == CLUSTERS
        assert row["distribution"] == pytest.approx([c / len(user["train_items"]) for c in expected])
        assert sum(row["distribution"]) == pytest.approx(1.0, abs=1e-12)
        held_out = {groups[user["valid_item"]], groups[user["test_item"]]} - set(counts)
        held_out_only += bool(held_out)
        for g in held_out:
            assert row["distribution"][g] == 0.0
    assert held_out_only > 0  # the data has users whose held-out items sit in groups their training does not
    assert written[0].rows == len(rows) == 80
    assert "80 users with a preference over" in caplog.text and "; 0 users without training items" in caplog.text


def test_preferences_refuse_items_without_a_group_and_keep_the_table(base_overrides):
    ctx = context(base_overrides)
    pregroup.run(ctx)
    preferences.run(ctx)
    before = ctx.lake.read_arrow("user_preferences").sort_by("user_idx")
    kept = ctx.lake.read_arrow("item_pregroups", where={"run_id": "groups"}).filter(pa.compute.not_equal(pa.compute.field("item_idx"), 3))
    ctx.lake.write(kept, "item_pregroups", "replace_run", Commit("groups", "test", "h"))
    with pytest.raises(TslrecError, match=r"user_idx \d+ has \d+ training items without a group in item_pregroups of "
                       r"run 'groups' \(e.g. item_idx 3\): re-run pregroup"):
        preferences.run(ctx)
    assert ctx.lake.read_arrow("user_preferences").sort_by("user_idx").equals(before)


def test_ci_variant_trains_on_the_pregroups(base_overrides):
    ctx = context(base_overrides, "srs.max_epochs=2", "srs.device=cpu")
    pregroup.run(ctx)
    trained = train_model(ctx, load_sequences(ctx), "sasrec", "ci", seed=1)
    groups = {item: g for item, (g, _) in grouping(ctx).items()}
    assert trained.model.items.group_of[:ITEMS].tolist() == [groups[i] for i in range(ITEMS)]
    assert 0.0 <= trained.valid["NDCG@10"] <= 1.0


def test_group_sizes_warn_on_empty_tiny_and_dominant_groups(caplog):
    logger = logging.getLogger("tslrec")
    logger.addHandler(caplog.handler)
    try:
        _report_sizes(np.array([100, 100, 99, 1]), 300)
        assert "1 of 4 groups hold fewer than 4 items (1)" in caplog.text
        caplog.clear()
        _report_sizes(np.array([75, 75, 75, 75]), 300)
        assert "WARNING" not in caplog.text
        _report_sizes(np.array([280, 20, 0, 0]), 300)
        assert "2 of 4 groups are empty" in caplog.text and "holds 93% of the items" in caplog.text
    finally:
        logger.removeHandler(caplog.handler)
