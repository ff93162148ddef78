"""The recommender stages.

pretrain (stage 0): the ID-based backbone on the training part; its item embedding table goes to
    srs_item_embeddings, for the pre-grouping and the LLM.
train (downstream): every configured backbone x item representation x seed; metrics to srs_metrics.
Each trained configuration is committed as soon as it is done (its own rows replaced), so an interrupted sweep
keeps what finished.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tslrec.context import RunContext
from tslrec.lake import Written
from tslrec.logs import get_logger
from tslrec.srs import significance
from tslrec.srs.data import Sequences, evaluation_set, load_sequences
from tslrec.srs.evaluate import per_user, summarize
from tslrec.srs.train import Trained, device_for, train_model

log = get_logger(__name__)

SPLITS = ("valid", "test")


def pretrain(ctx: RunContext) -> list[Written]:
    settings = ctx.config.pretrain
    data = load_sequences(ctx)
    trained = train_model(ctx, data, settings.backbone, "base", settings.seed)
    written = _record(ctx, "pretrain", data, trained, settings.backbone, "base", settings.seed)
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
    data = load_sequences(ctx)
    finished = _finished(ctx) if settings.skip_finished else set()
    written: list[Written] = []
    for backbone in settings.backbones:
        for variant in settings.variants:
            for seed in settings.seeds:
                if (backbone, variant, seed) in finished:
                    log.info("%s/%s/seed %d: already trained in this run with these settings, skipped", backbone,
                             variant, seed)
                    continue
                trained = train_model(ctx, data, backbone, variant, seed)
                written += _record(ctx, "train", data, trained, backbone, variant, seed)
    metrics = ctx.lake.read_pandas("srs_metrics", where={"run_id": ctx.run_id})
    configured = significance.seed_values(metrics, "train", "test")
    configured = configured[configured["backbone"].isin(settings.backbones) & configured["variant"].isin(settings.variants)
                            & configured["seed"].isin(settings.seeds)]
    log.info("test split, all users, mean and sample std over seeds:\n%s",
             significance.summarize(configured).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return written


def model_settings_hash(ctx: RunContext) -> str:
    """What one trained model depends on: every setting but the list of models to train."""
    return ctx.config.hash(leave_out=("train",))


def _finished(ctx: RunContext) -> set[tuple[str, str, int]]:
    if not ctx.lake.exists("srs_training"):
        return set()
    rows = ctx.lake.read_arrow("srs_training", where={"run_id": ctx.run_id}).to_pylist()
    current = model_settings_hash(ctx)
    return {(r["backbone"], r["variant"], r["seed"]) for r in rows
            if r["stage"] == "train" and r.get("settings_hash") == current}


def _record(
    ctx: RunContext, stage: str, data: Sequences, trained: Trained, backbone: str, variant: str, seed: int
) -> list[Written]:
    """Test metrics (and valid, with the restored best weights) of one trained model, and how training went."""
    srs = ctx.config.srs
    key = {"run_id": ctx.run_id, "dataset": ctx.config.dataset.name, "stage": stage, "backbone": backbone,
           "variant": variant, "seed": seed}
    rows = []
    for split in SPLITS:
        evaluation = evaluation_set(data, split, srs.max_length)
        metrics = per_user(trained.model, evaluation, srs.exclude_history, srs.eval_batch_size, device_for(ctx.config))
        for row in summarize(metrics, evaluation.history_lengths(), srs.activity_groups):
            rows.append({**key, "split": split, "user_group": row.user_group, "users": row.users,
                         "metric": row.metric, "value": row.value, "exclude_history": srs.exclude_history,
                         "config_hash": ctx.config_hash})
    overall = {r["metric"]: r["value"] for r in rows if r["split"] == "test" and r["user_group"] == "all"}
    log.info("%s/%s/seed %d test: %s", backbone, variant, seed, ", ".join(f"{k} {v:.4f}" for k, v in overall.items()))
    within = {"stage": stage, "backbone": backbone, "variant": variant, "seed": seed}
    commit = ctx.commit(stage)
    training = {**key, "epochs": trained.epochs, "best_epoch": trained.best_epoch,
                "seconds_per_epoch": trained.seconds_per_epoch,
                "parameters": sum(p.numel() for p in trained.model.parameters() if p.requires_grad),
                "device": str(device_for(ctx.config)), "config_hash": ctx.config_hash,
                "settings_hash": model_settings_hash(ctx)}
    return [
        ctx.lake.write(pa.Table.from_pylist(rows), "srs_metrics", "replace_run", commit, within=within),
        ctx.lake.write(pa.Table.from_pylist([training]), "srs_training", "replace_run", commit, within=within),
    ]
