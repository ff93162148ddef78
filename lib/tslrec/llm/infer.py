"""Stage 2, information augmentation (METHOD.md): every item alone through the tuned LLM, in a Spark pandas UDF.

The prompt of an item is d_inst, the item's one vector, d_res. The last hidden state is the item's
knowledge-enhanced embedding; the group head's softmax is its inferred distribution over the K categories.
Each Spark Python worker loads the model once and keeps it for every task it runs (Python workers are reused);
a Spark accumulator counts the loads. Results are written through the lake, never collected to the driver:

llm_item_embeddings  item_idx, embedding, distribution, model_id          (one row per item and run)
item_categories      item_idx, pregroup, top1, top3, top3_probs, agreement (C1 top-1 = pre-group, C2 pre-group in
                     the top 3 only, C3 neither; null for an item without a pre-group)

infer.mode=full replaces the run's rows; incremental embeds only the items that have no row yet for the model
and appends them (new items since the last run), leaving existing rows untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import torch
from pyspark import Accumulator
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from tslrec.config import LlmSection
from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.lake import Written
from tslrec.llm.artifact import ModelCard, check_compatible, load_artifact, read_card
from tslrec.llm.loading import resolve_dtype
from tslrec.llm.module import TSLRecLLM
from tslrec.llm.sft import artifacts_root, model_id_of
from tslrec.logs import get_logger

log = get_logger(__name__)

STAGE = "infer"
TOP = 3
OUTPUT_SCHEMA = "item_idx long, embedding array<float>, distribution array<float>"


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """All a Python worker needs to load the model and run it: small and picklable."""

    folder: str
    llm: LlmSection
    threads: int
    batch_size: int


_LOADED: dict[str, TSLRecLLM] = {}


def worker_model(spec: WorkerSpec, loads: Accumulator | None = None) -> TSLRecLLM:
    """The model of this Python worker, loaded on its first task and kept for the next ones."""
    if spec.folder not in _LOADED:
        _LOADED.clear()
        if spec.threads:
            torch.set_num_threads(spec.threads)
        device = torch.device("cuda" if spec.llm.device != "cpu" and torch.cuda.is_available() else "cpu")
        module, _ = load_artifact(Path(spec.folder), spec.llm, resolve_dtype(spec.llm, device))
        _LOADED[spec.folder] = module.to(device)
        if loads is not None:
            loads.add(1)
    return _LOADED[spec.folder]


@torch.no_grad()
def embed(module: TSLRecLLM, vectors: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (n, hidden), distributions (n, K)) of items given their stage-0 vectors (n, d), each alone."""
    device = module.project.weight.device
    states, distributions = [], []
    for first in range(0, len(vectors), batch_size):
        chunk = torch.as_tensor(vectors[first:first + batch_size], dtype=torch.float32, device=device)[:, None, :]
        h, distribution = module(chunk, torch.ones(chunk.shape[:2], dtype=torch.bool, device=device))
        states.append(h.float().cpu().numpy())
        distributions.append(distribution.float().cpu().numpy())
    if not states:
        return np.zeros((0, module.llm.config.hidden_size), np.float32), np.zeros((0, module.k), np.float32)
    return np.concatenate(states), np.concatenate(distributions)


def _embed_batches(batches: Iterator[pd.DataFrame], spec: WorkerSpec, loads: Accumulator) -> Iterator[pd.DataFrame]:
    module = worker_model(spec, loads)
    for batch in batches:
        vectors = np.stack(batch["vector"].to_numpy()).astype(np.float32) if len(batch) else np.zeros((0, 1))
        states, distributions = embed(module, vectors, spec.batch_size)
        yield pd.DataFrame({"item_idx": batch["item_idx"].to_numpy(), "embedding": list(states),
                            "distribution": list(distributions)})


def embed_items(ctx: RunContext, items: DataFrame, spec: WorkerSpec, workers: int) -> tuple[DataFrame, Accumulator]:
    """items (item_idx, vector) -> (item_idx, embedding, distribution) in `workers` Spark tasks at a time, and the
    accumulator that counts how many times a Python worker loaded the model."""
    loads = ctx.spark.sparkContext.accumulator(0)
    udf = functools.partial(_embed_batches, spec=spec, loads=loads)
    return items.repartition(workers).mapInPandas(udf, OUTPUT_SCHEMA), loads


def run(ctx: RunContext) -> list[Written]:
    settings = ctx.config.infer
    model_id = settings.model_id or model_id_of(ctx)
    folder = _model_folder(ctx, model_id)
    card = read_card(folder)
    k = ctx.lake.read_arrow("item_pregroup_centres", where={"run_id": card.run_id}, columns=["group"]).num_rows
    items = _items_with_vectors(ctx, card)
    check_compatible(card, k, items.select(F.size("vector")).first()[0], folder)
    incremental = settings.mode == "incremental" and ctx.lake.exists("llm_item_embeddings")
    if incremental:
        items = items.join(_embedded(ctx, model_id), "item_idx", "left_anti")
    workers = settings.workers
    spec = WorkerSpec(str(folder), ctx.config.llm, settings.threads or max(1, (os.cpu_count() or 1) // workers),
                      settings.batch_size)
    embedded, loads = embed_items(ctx, items, spec, workers)
    embedded = embedded.select(F.lit(ctx.run_id).alias("run_id"), F.lit(ctx.config.dataset.name).alias("dataset"),
                               F.lit(model_id).alias("model_id"), "item_idx", "embedding", "distribution")
    started = time.monotonic()
    with ctx.progress(f"{'new items' if incremental else 'items'} through {model_id} on {workers} workers"):
        written = ctx.lake.write(embedded, "llm_item_embeddings", "append" if incremental else "replace_run",
                                 ctx.commit(STAGE))
    seconds = time.monotonic() - started
    log.info("%d items embedded in %.1fs (%.1f items/s) by %d model loads in the Python workers%s",
             written.rows, seconds, written.rows / max(seconds, 1e-9), loads.value,
             " (incremental: items already embedded were left as they were)" if incremental else "")
    categories = _categorise(ctx, card)
    return [written, categories]


def _model_folder(ctx: RunContext, model_id: str) -> Path:
    folder = artifacts_root(ctx) / "models" / model_id
    if not folder.is_dir():
        known = []
        if ctx.lake.exists("models"):
            known = ctx.lake.read_arrow("models", where={"run_id": ctx.run_id}, columns=["model_id"])["model_id"]
        raise TslrecError(
            f"no model '{model_id}' in {folder.parent} (models of run '{ctx.run_id}': "
            f"{', '.join(map(str, known)) or 'none'}): run sft with this config first, or set infer.model_id"
        )
    return folder


def _items_with_vectors(ctx: RunContext, card: ModelCard) -> DataFrame:
    """Every item of the dataset with its stage-0 vector; items without one are reported, not skipped silently."""
    run = ctx.config.infer.vectors_run or card.vectors_run
    index = ctx.lake.read_spark(ctx.spark, "item_index", where={"dataset": ctx.config.dataset.name}).select("item_idx")
    vectors = (ctx.lake.read_spark(ctx.spark, card.vectors_table, where={"run_id": run})
               .filter(F.col("backbone") == card.vectors_backbone).select("item_idx", "vector"))
    joined = index.join(vectors, "item_idx", "left").cache()
    no_vector = F.col("vector").isNull()
    missing = joined.filter(no_vector)
    counts = joined.agg(F.count(F.lit(1)).alias("items"), F.count_if(no_vector).alias("without"))
    total, without = counts.first()
    if without == total:
        raise TslrecError(f"{card.vectors_table} has no {card.vectors_backbone} vectors of run '{run}' for the items "
                          f"of dataset '{ctx.config.dataset.name}': run pretrain, or set infer.vectors_run")
    if without:
        sample = [r.item_idx for r in missing.limit(5).collect()]
        log.warning("%d items of item_index have no vector in %s (run %s), so the LLM cannot embed them "
                    "(e.g. item_idx %s): items new since that run need a new pretrain run (infer.vectors_run)",
                    without, card.vectors_table, run, sample)
    return joined.filter(F.col("vector").isNotNull())


def _embedded(ctx: RunContext, model_id: str) -> DataFrame:
    """The items this run already embedded with this model; another model's rows need a full run."""
    rows = ctx.lake.read_arrow("llm_item_embeddings", where={"run_id": ctx.run_id}, columns=["model_id"])
    others = sorted(set(pc.unique(rows["model_id"]).to_pylist()) - {model_id})
    if others:
        raise TslrecError(
            f"llm_item_embeddings of run '{ctx.run_id}' holds items of model {', '.join(others)}, not {model_id}: "
            "incremental inference only adds items of the same model; run with infer.mode=full"
        )
    return ctx.lake.read_spark(ctx.spark, "llm_item_embeddings", where={"run_id": ctx.run_id}).select("item_idx")


def agreement(pregroup: Column, top_groups: Column) -> Column:
    """C1: the top-1 category is the pre-group; C2: the pre-group is in the top 3 only; C3: neither."""
    return (F.when(pregroup.isNull(), F.lit(None))
            .when(top_groups[0] == pregroup, F.lit("C1"))
            .when(F.array_contains(top_groups, pregroup), F.lit("C2"))
            .otherwise(F.lit("C3")))


def top_categories(distribution: Column) -> tuple[Column, Column]:
    """(top-3 groups, their probabilities), most probable first; ties go to the lower group."""
    ranked = F.sort_array(F.transform(distribution, lambda p, g: F.struct((-p).alias("key"), g.alias("group"))))
    top = F.slice(ranked, 1, TOP)
    return F.transform(top, lambda s: s["group"]), F.transform(top, lambda s: -s["key"])


def _categorise(ctx: RunContext, card: ModelCard) -> Written:
    """item_categories of the run, from all its embedded items (new and old) and the model's pre-grouping."""
    embedded = ctx.lake.read_spark(ctx.spark, "llm_item_embeddings", where={"run_id": ctx.run_id})
    pregroups = ctx.lake.read_spark(ctx.spark, "item_pregroups", where={"run_id": card.run_id}).select(
        "item_idx", F.col("group").alias("pregroup"))
    top_groups, top_probs = top_categories(F.col("distribution"))
    categories = (
        embedded.join(pregroups, "item_idx", "left")
        .select("run_id", "dataset", "model_id", "item_idx", "pregroup", top_groups.alias("top3"),
                top_probs.cast("array<float>").alias("top3_probs"))
        .withColumn("top1", F.col("top3")[0])
        .withColumn("agreement", agreement(F.col("pregroup"), F.col("top3")))
    )
    with ctx.progress("write item_categories"):
        written = ctx.lake.write(categories, "item_categories", "replace_run", ctx.commit(STAGE))
    cases = ctx.lake.read_arrow("item_categories", where={"run_id": ctx.run_id}, columns=["agreement"])["agreement"]
    shares = sorted(pc.value_counts(cases).to_pylist(), key=lambda r: str(r["values"]))
    log.info("agreement of the inferred categories with the pre-groups: %s",
             ", ".join(f"{r['values']} {r['counts']} ({r['counts'] / max(written.rows, 1):.1%})" for r in shares))
    return written
