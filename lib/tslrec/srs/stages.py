"""The recommender stages.

pretrain (stage 0): the ID-based backbone on the training part; its item embedding table goes to
    srs_item_embeddings, for the pre-grouping and the LLM.
train (downstream): every configured backbone x item representation x seed; metrics to srs_metrics.
Each trained configuration is committed as soon as it is done (its own rows replaced), so an interrupted sweep
keeps what finished. With train.workers > 1 the models train at once in worker processes (spawned, so CUDA works
in them) and this process alone writes to the lake, so no two writers ever race on a table.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from tslrec.config import Config
from tslrec.context import RunContext
from tslrec.lake import Written
from tslrec.logs import adopt_stage, current_stage, get_logger, setup_logging
from tslrec.srs import significance
from tslrec.srs.data import Sequences, evaluation_set, load_sequences
from tslrec.srs.evaluate import per_user, summarize
from tslrec.srs.train import Trained, device_for, train_model, use_threads

log = get_logger(__name__)

SPLITS = ("valid", "test")


def pretrain(ctx: RunContext) -> list[Written]:
    settings = ctx.config.pretrain
    use_threads(ctx.config)
    data = load_sequences(ctx)
    model = Model(settings.backbone, "base", settings.seed)
    trained = train_model(ctx, data, *model)
    written = _write(ctx, _evaluate(ctx, "pretrain", data, model, trained))
    vectors = trained.model.items.table().detach().cpu().numpy().astype(np.float32)
    n, dim = vectors.shape
    table = pa.table({
        "run_id": pa.array([ctx.run_id] * n, pa.string()),
        "dataset": pa.array([ctx.config.dataset.name] * n, pa.string()),
        "backbone": pa.array([settings.backbone] * n, pa.string()),
        "item_idx": pa.array(np.arange(n, dtype=np.int32)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim).cast(pa.list_(pa.float32())),
    })
    embeddings = ctx.lake.write(table, "srs_item_embeddings", "replace_run", ctx.commit("pretrain"),
                                within={"backbone": settings.backbone})
    log.info("item embeddings of %s: %d items x %d", settings.backbone, n, dim)
    return [*written, embeddings]


def train(ctx: RunContext) -> list[Written]:
    settings = ctx.config.train
    finished = _finished(ctx) if settings.skip_finished else set()
    models = []
    for model in (Model(b, v, s) for b in settings.backbones for v in settings.variants for s in settings.seeds):
        if model in finished:
            log.info("%s: already trained in this run with these settings, skipped", model)
        else:
            models.append(model)
    written: list[Written] = []
    started = time.monotonic()
    for done, result in enumerate(_train_all(ctx, models), start=1):
        written += _write(ctx, result)
        elapsed = time.monotonic() - started
        log.info("%d/%d models trained, %.0fs, ETA %.0fs", done, len(models), elapsed,
                 elapsed / done * (len(models) - done))
    metrics = ctx.lake.read_pandas("srs_metrics", where={"run_id": ctx.run_id})
    configured = significance.seed_values(metrics, "train", "test")
    configured = configured[configured["backbone"].isin(settings.backbones) & configured["variant"].isin(settings.variants)
                            & configured["seed"].isin(settings.seeds)]
    log.info("test split, all users, mean and sample std over seeds:\n%s",
             significance.summarize(configured).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return written


@dataclass(frozen=True)
class Model:
    """One model of a sweep."""

    backbone: str
    variant: str
    seed: int

    def __iter__(self) -> Iterator[Any]:
        return iter((self.backbone, self.variant, self.seed))

    def __str__(self) -> str:
        return f"{self.backbone}/{self.variant}/seed {self.seed}"


@dataclass(frozen=True)
class Evaluated:
    """What one trained model adds to srs_metrics and srs_training; small enough to send between processes."""

    stage: str
    model: Model
    metrics: list[dict[str, Any]]
    training: dict[str, Any]


def _train_all(ctx: RunContext, models: list[Model]) -> Iterator[Evaluated]:
    """Each model's result as soon as it is trained: one after the other, or in train.workers processes."""
    workers = min(ctx.config.train.workers, len(models))
    if workers <= 1:
        use_threads(ctx.config)
        data = load_sequences(ctx) if models else None
        for model in models:
            yield _train_one(ctx, data, model)
        return
    log.info("training %d models in %d worker processes", len(models), workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(ctx.config, workers, current_stage()))
    try:
        for future in as_completed([pool.submit(_train_in_worker, model) for model in models]):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_worker: tuple[RunContext, Sequences] | None = None


def _start_worker(config: Config, workers: int, stage: str) -> None:
    """Once per worker process: the sequences are read once and serve every model the worker trains."""
    global _worker
    setup_logging()
    adopt_stage(config.run_id, stage)
    use_threads(config, workers)
    ctx = RunContext(config)
    _worker = (ctx, load_sequences(ctx))


def _train_in_worker(model: Model) -> Evaluated:
    assert _worker is not None, "worker not started"
    return _train_one(*_worker, model)


def _train_one(ctx: RunContext, data: Sequences, model: Model) -> Evaluated:
    return _evaluate(ctx, "train", data, model, train_model(ctx, data, *model))


def model_settings_hash(ctx: RunContext) -> str:
    """What one trained model depends on: not the list of models to train, nor where and how fast it ran."""
    return ctx.config.hash(leave_out=("train", "srs.device", "srs.threads", "srs.eval_batch_size"))


def _finished(ctx: RunContext) -> set[Model]:
    if not ctx.lake.exists("srs_training"):
        return set()
    rows = ctx.lake.read_arrow("srs_training", where={"run_id": ctx.run_id}).to_pylist()
    current = model_settings_hash(ctx)
    return {Model(r["backbone"], r["variant"], r["seed"]) for r in rows
            if r["stage"] == "train" and r.get("settings_hash") == current}


def _evaluate(ctx: RunContext, stage: str, data: Sequences, model: Model, trained: Trained) -> Evaluated:
    """Test metrics (and valid, with the restored best weights) of one trained model, and how training went."""
    srs = ctx.config.srs
    key = {"run_id": ctx.run_id, "dataset": ctx.config.dataset.name, "stage": stage, "backbone": model.backbone,
           "variant": model.variant, "seed": model.seed}
    rows = []
    for split in SPLITS:
        evaluation = evaluation_set(data, split, srs.max_length)
        metrics = per_user(trained.model, evaluation, srs.exclude_history, srs.eval_batch_size, device_for(ctx.config))
        for row in summarize(metrics, evaluation.history_lengths(), srs.activity_groups):
            rows.append({**key, "split": split, "user_group": row.user_group, "users": row.users,
                         "metric": row.metric, "value": row.value, "exclude_history": srs.exclude_history,
                         "config_hash": ctx.config_hash})
    overall = {r["metric"]: r["value"] for r in rows if r["split"] == "test" and r["user_group"] == "all"}
    log.info("%s test: %s", model, ", ".join(f"{k} {v:.4f}" for k, v in overall.items()))
    training = {**key, "epochs": trained.epochs, "best_epoch": trained.best_epoch, "stopped_by": trained.stopped_by,
                "seconds_per_epoch": trained.seconds_per_epoch,
                "parameters": sum(p.numel() for p in trained.model.parameters() if p.requires_grad),
                "device": str(device_for(ctx.config)), "config_hash": ctx.config_hash,
                "settings_hash": model_settings_hash(ctx)}
    return Evaluated(stage, model, rows, training)


def _write(ctx: RunContext, result: Evaluated) -> list[Written]:
    within = {"stage": result.stage, "backbone": result.model.backbone, "variant": result.model.variant,
              "seed": result.model.seed}
    commit = ctx.commit(result.stage)
    return [
        ctx.lake.write(pa.Table.from_pylist(result.metrics), "srs_metrics", "replace_run", commit, within=within),
        ctx.lake.write(pa.Table.from_pylist([result.training]), "srs_training", "replace_run", commit, within=within),
    ]
