"""Stage 2: item inference in a real Spark pandas UDF with a real (tiny) tuned model, the categories, and SQL."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from pyspark.sql import functions as F

from tslrec import ledger
from tslrec.config import load_config
from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.lake import Commit, Lake
from tslrec.llm import infer
from tslrec.llm.artifact import load_artifact
from tslrec.pipeline import run_stages, select_stages

from conftest import ROOT, TEST_SPARK

BIN = Path(sys.executable).parent
ITEMS = 60


@pytest.fixture(scope="module")
def tuned(spark, tmp_path_factory):
    """A small synthetic run with a tiny model fine-tuned for a few steps (one process, as `tslrec sft` runs it)."""
    folder = tmp_path_factory.mktemp("infer")
    overrides = [*TEST_SPARK, f"lake.root={folder / 'lake'}", f"llm.artifacts={folder / 'artifacts'}",
                 "synthetic.users=150", f"synthetic.items={ITEMS}", "synthetic.users_per_partition=75",
                 "srs.max_epochs=2", "srs.device=cpu", "pregroup.k=6", "llm.model=tiny", "llm.dtype=float32",
                 "sft.max_steps=4", "sft.log_every=2"]
    run_stages(RunContext(load_config(overrides=overrides)), select_stages(until="preferences"))
    result = subprocess.run([BIN / "tslrec", "sft", *overrides], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    return overrides


def context(overrides, *extra):
    return RunContext(load_config(overrides=[*overrides, *extra]))


def direct(ctx, item_idx):
    """The same model called directly (no Spark, no DeepSpeed) on the same items, each alone in its prompt."""
    (row,) = ctx.lake.read_arrow("models", where={"run_id": ctx.run_id}).to_pylist()
    module, card = load_artifact(Path(row["path"]), ctx.config.llm, torch.float32)
    vectors = ctx.lake.read_pandas("srs_item_embeddings", where={"run_id": ctx.run_id}).set_index("item_idx")
    items = torch.tensor(np.stack(vectors.loc[item_idx, "vector"].to_numpy()), dtype=torch.float32)[:, None, :]
    with torch.no_grad():
        h, distribution = module(items, torch.ones(items.shape[:2], dtype=torch.bool))
    return h.numpy(), distribution.numpy()


def test_udf_output_equals_a_direct_call_and_loads_the_model_once_per_worker(tuned):
    ctx = context(tuned)
    (row,) = ctx.lake.read_arrow("models", where={"run_id": ctx.run_id}).to_pylist()
    items = ctx.lake.read_spark(ctx.spark, "srs_item_embeddings", where={"run_id": ctx.run_id}).select("item_idx",
                                                                                                       "vector")
    spec = infer.WorkerSpec(row["path"], ctx.config.llm, threads=1, batch_size=7)
    embedded, loads = infer.embed_items(ctx, items, spec, workers=6)
    rows = embedded.orderBy("item_idx").toPandas()
    assert len(rows) == ITEMS and rows["item_idx"].tolist() == list(range(ITEMS))
    assert embedded.rdd.getNumPartitions() == 6
    # six tasks on local[2]: Python workers are reused, so at most two loads (one per worker), not one per task
    assert 1 <= loads.value <= 2
    h, distribution = direct(ctx, rows["item_idx"].to_numpy())
    assert np.allclose(np.stack(rows["embedding"]), h, atol=1e-4)
    assert np.allclose(np.stack(rows["distribution"]), distribution, atol=1e-5)
    assert np.allclose(distribution.sum(axis=1), 1.0, atol=1e-5)


def test_stage_writes_embeddings_and_categories_and_incremental_embeds_only_new_items(tuned):
    ctx = context(tuned, "infer.workers=2")
    run_stages(ctx, select_stages(only="infer"))
    embeddings = ctx.lake.read_pandas("llm_item_embeddings", where={"run_id": ctx.run_id}).sort_values("item_idx")
    assert len(embeddings) == ITEMS and embeddings["item_idx"].is_unique
    categories = ctx.lake.read_pandas("item_categories", where={"run_id": ctx.run_id}).sort_values("item_idx")
    pregroups = ctx.lake.read_pandas("item_pregroups", where={"run_id": ctx.run_id}).sort_values("item_idx")
    assert categories["pregroup"].tolist() == pregroups["group"].tolist()
    for (_, emb), (_, cat) in zip(embeddings.iterrows(), categories.iterrows()):
        order = np.argsort(-np.asarray(emb["distribution"]), kind="stable")[:3]
        assert list(cat["top3"]) == order.tolist() and cat["top1"] == order[0]
        assert np.allclose(cat["top3_probs"], np.asarray(emb["distribution"])[order])
    version = ctx.lake.version("llm_item_embeddings")
    run_stages(ctx, select_stages(only="infer"))  # a full re-run replaces the run's rows: same rows, one version
    assert ctx.lake.version("llm_item_embeddings") == version + 1
    assert len(ctx.lake.read_arrow("llm_item_embeddings", where={"run_id": ctx.run_id})) == ITEMS

    kept = embeddings[embeddings["item_idx"] >= 10]
    ctx.lake.write(pa.Table.from_pandas(kept, preserve_index=False), "llm_item_embeddings", "replace_run",
                   Commit(ctx.run_id, "test", "h"))  # as if items 0-9 were new since the last run
    before = ctx.lake.read_pandas("llm_item_embeddings", where={"run_id": ctx.run_id})
    incremental = context(tuned, "infer.workers=2", "infer.mode=incremental")
    written = run_stages(incremental, select_stages(only="infer"))[0].written
    assert written[0].table == "llm_item_embeddings" and written[0].rows == 10
    after = ctx.lake.read_pandas("llm_item_embeddings", where={"run_id": ctx.run_id})
    assert len(after) == ITEMS and after["item_idx"].is_unique
    assert set(after["item_idx"]) - set(before["item_idx"]) == set(range(10))
    history = Lake(ctx.config.lake.root).history("llm_item_embeddings", 1)[0]
    assert history.get("tslrec.stage") == "infer"
    assert len(ctx.lake.read_arrow("item_categories", where={"run_id": ctx.run_id})) == ITEMS


def test_a_missing_model_names_the_models_of_the_run(tuned):
    ctx = context(tuned, "infer.model_id=nope")
    with pytest.raises(TslrecError, match=r"no model 'nope' .*models of run 'synthetic': synthetic-user-"):
        infer.run(ctx)


def test_agreement_cases_on_hand_made_distributions(spark):
    rows = [  # pregroup, distribution over 5 groups, expected top-3, expected case
        (2, [0.1, 0.1, 0.5, 0.2, 0.1], [2, 3, 0], "C1"),
        (3, [0.1, 0.1, 0.5, 0.2, 0.1], [2, 3, 0], "C2"),
        (4, [0.3, 0.1, 0.4, 0.15, 0.05], [2, 0, 3], "C3"),
        (1, [0.25, 0.25, 0.25, 0.15, 0.1], [0, 1, 2], "C2"),  # ties: the lower group first
        (None, [0.2, 0.2, 0.2, 0.2, 0.2], [0, 1, 2], None),
    ]
    frame = spark.createDataFrame([(p, d) for p, d, _, _ in rows], "pregroup int, distribution array<double>")
    top_groups, top_probs = infer.top_categories(F.col("distribution"))
    got = frame.select(top_groups.alias("top"), top_probs.alias("p"),
                       infer.agreement(F.col("pregroup"), top_groups).alias("case")).collect()
    for (_, distribution, top, case), row in zip(rows, got):
        assert row.top == top and row.case == case
        assert row.p == pytest.approx([distribution[g] for g in top])


def test_sql_is_read_only_and_writes_files(tuned, tmp_path):
    lake = next(o.split("=", 1)[1] for o in tuned if o.startswith("lake.root="))

    def sql(*args):
        return subprocess.run([BIN / "tslrec", "sql", *args, f"lake.root={lake}"], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)

    shown = sql("SELECT count(*) AS users FROM user_sequences")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["users", "150"]
    for statement in ("DROP TABLE user_sequences", "COPY (SELECT 1) TO 'x.csv'", "SELECT 1; DELETE FROM models",
                      "CREATE TABLE t AS SELECT 1"):
        refused = sql(statement)
        assert refused.returncode == 2 and "read-only" in refused.stderr, statement
    outside = sql("SELECT * FROM read_csv('/etc/hostname')")
    assert outside.returncode == 2 and "disabled by configuration" in outside.stderr
    out = tmp_path / "groups.csv"
    written = sql("--out", str(out), "SELECT \"group\", count(*) AS n FROM item_pregroups GROUP BY 1 ORDER BY 1")
    assert written.returncode == 0, written.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "group,n" and sum(int(line.split(",")[1]) for line in lines[1:]) == ITEMS
    again = sql("--out", str(out), "SELECT 1 AS x")
    assert again.returncode == 2 and "already exists and would be replaced" in again.stderr
    assert out.read_text().splitlines() == lines
    assert sql("--out", str(out), "--force", "SELECT 1 AS x").returncode == 0 and out.read_text() == "x\n1\n"
    into_lake = sql("--out", str(Path(lake) / "user_sequences" / "x.parquet"), "SELECT 1 AS x")
    assert into_lake.returncode == 2 and "is inside the lake" in into_lake.stderr
    broken = sql("SELEC 1")
    assert broken.returncode == 2 and "does not parse" in broken.stderr and "Traceback" not in broken.stderr


def test_lake_tables_as_spark_sql_views(tuned):
    ctx = context(tuned)
    names = ctx.lake.register_views(ctx.spark)
    assert "user_preferences" in names
    (row,) = ctx.spark.sql("SELECT count(*) AS n, round(min(aggregate(distribution, 0D, (a, x) -> a + x)), 6) AS s "
                           "FROM user_preferences").collect()
    assert row.n == len(ctx.lake.read_arrow("user_preferences")) and row.s == 1.0


def test_the_readme_queries_run_on_a_tuned_run(tuned):
    """The analyst queries shown in the README, on this run's tables."""
    lake = Lake(next(o.split("=", 1)[1] for o in tuned if o.startswith("lake.root=")))
    infer.run(context(tuned))
    readme = (ROOT / "README.md").read_text()
    queries = re.findall(r'tslrec sql (?:--out \S+ )?"(.+?)"', readme, flags=re.S)
    assert len(queries) == 4
    results = [lake.sql(q.replace("'beauty'", "'synthetic'")) for q in queries]
    sizes, cases, disagreeing, nearest = results
    assert sum(sizes["items"].to_pylist()) == ITEMS
    assert set(cases["agreement"].to_pylist()) <= {"C1", "C2", "C3"} and sum(cases["items"].to_pylist()) == ITEMS
    assert disagreeing.num_rows == cases.to_pandas().set_index("agreement")["items"].get("C3", 0)
    assert nearest.num_rows == 10 and nearest["cosine"].to_pylist() == sorted(nearest["cosine"].to_pylist(), reverse=True)


def test_the_notebooks_execute_on_a_run(tuned):
    """Both analyst notebooks run top to bottom on this run's tables (after inference and downstream training)."""
    import nbformat
    from nbclient import NotebookClient

    ctx = context(tuned, "srs.max_epochs=2", "train.variants=[base,tslrec]", "train.seeds=[1,2]")
    run_stages(ctx, select_stages(only="infer") + select_stages(only="train"))
    lake = next(o.split("=", 1)[1] for o in tuned if o.startswith("lake.root="))
    os.environ.update(TSLREC_LAKE=lake, TSLREC_RUN=ctx.run_id)
    try:
        for name, expected in (("item_categories", ("C1", "cosine", "<svg")), ("evaluation", ("NDCG@10", "tslrec"))):
            book = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
            NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
            text = json.dumps([cell.get("outputs", []) for cell in book.cells])
            assert "Traceback" not in text and all(e in text for e in expected), name
    finally:
        for key in ("TSLREC_LAKE", "TSLREC_RUN"):
            os.environ.pop(key, None)


def test_the_table2_experiment_resumes_and_reports_every_configuration(tuned, tmp_path):
    """benchmarks/table2.py as a user runs it: a first sweep, then more seeds (the finished models are not
    trained again); each model is one ledger line, and the table's numbers are the means of srs_metrics."""
    sweep = [sys.executable, str(ROOT / "benchmarks" / "table2.py"), "--dataset", "synthetic", "--backbones", "sasrec,caser",
             "--out", str(tmp_path / "table2.md"), "--ledger", str(tmp_path / "results" / "synthetic.jsonl"),
             *tuned, f"srs.checkpoints={tmp_path / 'checkpoints'}",
             f"run.reports={tmp_path}"]
    first = subprocess.run([*sweep, "--seeds", "1"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([*sweep, "--seeds", "1,2"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert second.returncode == 0, second.stderr
    for backbone in ("sasrec", "caser"):
        for variant in ("base", "ci", "tslrec"):
            skipped = f"{backbone}/{variant}/seed 1: already trained in this run with these settings and in the ledger"
            assert f"{skipped}, skipped" in second.stderr
    table = (tmp_path / "table2.md").read_text()
    assert table in second.stdout and (tmp_path / "synthetic.html").is_file()
    rows = {tuple(cells[:2]): cells[2:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                                      for line in table.splitlines())
            if len(cells) > 2 and cells[1] in ("Base", "CI", "TSLRec")}
    assert set(rows) == {(b, v) for b in ("Caser", "SASRec") for v in ("Base", "CI", "TSLRec")}
    metrics = Lake(next(o.split("=", 1)[1] for o in tuned if o.startswith("lake.root="))).read_pandas("srs_metrics")
    chosen = metrics[(metrics["stage"] == "train") & (metrics["split"] == "test") & (metrics["user_group"] == "all")
                     & (metrics["backbone"] == "sasrec") & (metrics["variant"] == "ci") & (metrics["metric"] == "NDCG@10")
                     & metrics["seed"].isin([1, 2])]
    hr5, hr10, ndcg5, ndcg10, seeds, p_hr10, p_ndcg10, epochs, per_epoch = rows[("SASRec", "CI")]
    assert seeds == "2" and ndcg10.startswith(f"{chosen['value'].mean():.4f} ± ")
    assert 0.0 <= float(p_ndcg10) <= 1.0 and rows[("SASRec", "TSLRec")][5] == ""
    assert "| sft |" in table and "| train |" in table
    lines = ledger.read(tmp_path / "results" / "synthetic.jsonl")
    trained = sorted((line["backbone"], line["variant"], line["seed"]) for line in lines if line["stage"] == "train")
    assert trained == sorted((b, v, s) for b in ("sasrec", "caser") for v in ("base", "ci", "tslrec") for s in (1, 2))
    assert [line["stage"] for line in lines].count("pretrain") <= 1  # the stage-0 model, when the sweep trained it
