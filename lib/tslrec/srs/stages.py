"""The recommender stages.

pretrain (stage 0): the ID-based backbone on the training part; its item embedding table goes to
    srs_item_embeddings, for the pre-grouping and the LLM.
train (downstream): every configured backbone x item representation x seed; metrics to srs_metrics.
Each trained configuration is committed as soon as it is done (its own rows replaced), so an interrupted sweep
keeps what finished, and a model killed half-way resumes from its last epoch's checkpoint (srs.checkpoints).
Three ways to run the models: one after the other in this process; several at once, one per worker process
(train.workers, spawned so CUDA works in them; this process alone writes to the lake); or each model over several
ranks of data-parallel training (srs.distributed, launched on Spark; rank 0 alone writes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from tslrec import ledger
from tslrec.config import NOT_OF_A_MODEL, Config
from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.lake import Written
from tslrec.logs import adopt_stage, get_logger, setup_logging
from tslrec.processes import die_with_parent
from tslrec.srs import distributed, significance
from tslrec.srs.data import Sequences, evaluation_set, load_sequences
from tslrec.srs.ensemble import train_ensemble
from tslrec.srs.evaluate import per_user, summarize
from tslrec.srs.team import Team
from tslrec.srs.train import Trained, device_for, set_up_cpu, train_model
from tslrec.stage_runs import read_versions

log = get_logger(__name__)

SPLITS = ("valid", "test")
# Part of every model's identity: raise it with any change to the recommender code that changes what training
# produces, so that a lake's models from before the change are trained again instead of counting as finished.
# 5: FMLP-Rec under bfloat16 autocast; 6: the fused softmax of the loss; 7: dropout masks from 16-bit draws;
# 8: Caser's convolutions as projections of each position (other rounding); 9: the sampled loss scores with its
# items' own vectors, not rows of the whole table (a fusion's dropout per occurrence); 10: dropout masks of p = 0.5
# and other multiples of 2^-8 from fewer random bits (another random stream)
TRAINING_REVISION = 10
OTHER_CHECKPOINTS_KEPT_S = 6 * 3600  # a checkpoint of other settings this fresh may belong to a training under way


def pretrain(ctx: RunContext) -> list[Written]:
    settings = ctx.config.pretrain
    return _run(ctx, "pretrain", [Model(settings.backbone, "base", settings.seed)])


def train(ctx: RunContext) -> list[Written]:
    settings = ctx.config.train
    finished = _finished(ctx) if settings.skip_finished else set()
    models = []
    for model in (Model(b, v, s) for b in settings.backbones for v in settings.variants for s in settings.seeds):
        if model in finished:
            log.info("%s: already trained in this run with these settings%s, skipped", model,
                     " and in the ledger" if ctx.config.ledger.path else "")
        else:
            models.append(model)
    written = _run(ctx, "train", models)
    log.info("test split, all users, mean and sample std over seeds:\n%s",
             significance.summarize(sweep_test_values(ctx)).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return written


def sweep_test_values(ctx: RunContext) -> pd.DataFrame:
    """The test metrics (all users) of the configured sweep's models, one row per model."""
    settings = ctx.config.train
    metrics = ctx.lake.read_pandas("srs_metrics", where={"run_id": ctx.run_id})
    values = significance.seed_values(metrics, "train", "test")
    return values[values["backbone"].isin(settings.backbones) & values["variant"].isin(settings.variants)
                  & values["seed"].isin(settings.seeds)]


def _run(ctx: RunContext, stage: str, models: list[Model]) -> list[Written]:
    if not models:
        return []
    if ctx.config.ledger.path:
        log.info("ledger: %s, code revision %s", ctx.config.ledger.path, ledger.code_revision())
    if ctx.config.srs.distributed.backend != "none":
        if ctx.config.train.workers > 1 and stage == "train":
            raise TslrecError("train.workers > 1 and srs.distributed.backend are two ways to use the machine: "
                              "set train.workers=1 to train each model over several ranks, or backend=none")
        return distributed.launch(ctx, _on_rank, ctx.config, stage, models)
    if stage == "train" and ctx.config.train.workers > 1:
        return _train_in_pool(ctx, models)
    set_up_cpu(ctx.config)
    return _train_models(ctx, stage, models, Team(device_for(ctx.config)))


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
    item_vectors: np.ndarray | None  # pretrain: the item embedding table
    checkpoint: Path | None


def _train_models(ctx: RunContext, stage: str, models: list[Model], team: Team) -> list[Written]:
    """The models one after the other, each by this process alone or with the other ranks of its team."""
    data = load_sequences(ctx, team.rank, team.world)
    if team.any(len(data.users) == 0):
        raise TslrecError(f"a rank of {team.world} has no users of run '{ctx.run_id}' ({len(data.users)} here): "
                          f"run the sequences stage first, or use fewer srs.distributed.processes")
    written: list[Written] = []
    started = time.monotonic()
    for done, model in enumerate(models, start=1):
        result = _train_one(ctx, stage, data, model, team)
        if result is not None:
            written += _write(ctx, result)
            _log_progress(done, len(models), started)
    return team.share(written)


def _on_rank(config: Config, stage: str, models: list[Model]) -> list[Written]:
    """What every rank of data-parallel training runs, in the process the launcher started."""
    team = distributed.join(config)
    setup_logging("INFO" if team.rank == 0 else "WARNING")
    adopt_stage(config.run_id, stage)
    set_up_cpu(config, team.local_size)
    try:
        return _train_models(RunContext(config), stage, models, team)
    finally:
        team.leave()


def _train_in_pool(ctx: RunContext, models: list[Model]) -> list[Written]:
    """train.workers models at once, one per worker process; this process writes each as soon as it is done."""
    workers = min(ctx.config.train.workers, len(models))
    log.info("training %d models in %d worker processes", len(models), workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(ctx.config, workers, "train", os.getpid()))
    written: list[Written] = []
    failed: list[str] = []
    started = time.monotonic()
    try:
        futures = {pool.submit(_train_in_worker, model): model for model in models}
        for done, future in enumerate(as_completed(futures), start=1):
            try:
                result = future.result()
            except Exception as exc:  # one model's failure (a GPU out of memory, say) must not lose the others
                first_line = (str(exc).splitlines() or [""])[0][:300]
                failed.append(f"{futures[future]}: {type(exc).__name__}: {first_line}")
                log.error("%s", failed[-1])
                continue
            written += _write(ctx, result)
            _log_progress(done, len(models), started)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if failed:
        raise TslrecError(f"{len(failed)} of {len(models)} models failed; the others are in the lake, and running the "
                          f"stage again trains only the missing ones:\n" + "\n".join(failed))
    return written


def _log_progress(done: int, total: int, started: float) -> None:
    elapsed = time.monotonic() - started
    log.info("%d/%d models trained, %.0fs, ETA %.0fs", done, total, elapsed, elapsed / done * (total - done))


_worker: tuple[RunContext, str, Sequences] | None = None


def _start_worker(config: Config, workers: int, stage: str, parent: int) -> None:
    """Once per worker process: the sequences are read once and serve every model the worker trains."""
    global _worker
    die_with_parent(parent)
    setup_logging()
    adopt_stage(config.run_id, stage)
    set_up_cpu(config, workers)
    ctx = RunContext(config)
    _worker = (ctx, stage, load_sequences(ctx))


def _train_in_worker(model: Model) -> Evaluated:
    assert _worker is not None, "worker not started"
    result = _train_one(*_worker, model, Team(device_for(_worker[0].config)))
    assert result is not None, "a team of one is its own rank 0"
    return result


def _train_one(ctx: RunContext, stage: str, data: Sequences, model: Model, team: Team) -> Evaluated | None:
    """Trains and evaluates one model; what rank 0 writes (None on the other ranks)."""
    checkpoint = _checkpoint(ctx, stage, model)
    if model.variant == "ensemble":
        trained = train_ensemble(ctx, data, model.backbone, model.seed, team,
                                 lambda member: _checkpoint(ctx, stage, model, f"-member{member}"))
    else:
        trained = train_model(ctx, data, *model, team=team, checkpoint=checkpoint)
    return _evaluate(ctx, stage, data, model, trained, team, checkpoint)


def _checkpoint(ctx: RunContext, stage: str, model: Model, member: str = "") -> Path | None:
    folder = ctx.config.srs.checkpoints
    if folder is None:
        return None
    name = f"{_checkpoint_prefix(stage, model)}{member}-{model_identity(ctx, model.backbone, model.variant)}.pt"
    return Path(folder).expanduser().resolve() / ctx.run_id / name


def _checkpoint_prefix(stage: str, model: Model) -> str:
    return f"{stage}-{model.backbone}-{model.variant}-seed{model.seed}"


def model_identity(ctx: RunContext, backbone: str, variant: str) -> str:
    """What one trained model depends on: the settings it trains with, the versions of the tables it reads (so new
    data trains it again, and a checkpoint made on older data is not resumed) and the training code's revision.
    Not the list of models to train, nor where and how fast it ran; not the settings of the stages before it either
    (what they made is in the versions of the tables it reads), nor those of other backbones and representations: a
    new SFT setting or another backbone's learning rate leaves a finished Base model finished."""
    return f"{_settings_hash(ctx, backbone, variant)}-d{_inputs_hash(ctx, variant)}-r{TRAINING_REVISION}"


def _settings_hash(ctx: RunContext, backbone: str, variant: str) -> str:
    """The config hash of the `srs` settings alone, with only this backbone's and of srs.representation only what
    the variant reads."""
    data = ctx.config.to_dict()
    srs = data["srs"]
    unread = [section for section in data if section != "srs"]
    unread += [f"srs.backbones.{other}" for other in srs["backbones"] if other != backbone]
    unread += [f"srs.representation.{key}" for key in srs["representation"] if not _reads(variant, key)]
    return ctx.config.hash(leave_out=(*NOT_OF_A_MODEL, *unread))


def _reads(variant: str, representation_key: str) -> bool:
    pregroups = representation_key.startswith("pregroups_")
    return (variant == "ci" and pregroups) or (variant == "tslrec" and not pregroups)


def _inputs_hash(ctx: RunContext, variant: str) -> str:
    reads = _inputs(ctx, variant)
    return hashlib.sha256(json.dumps(read_versions(ctx, reads, reads)).encode()).hexdigest()[:8]


def _inputs(ctx: RunContext, variant: str) -> dict[str, str]:
    """The tables a model of the variant reads, and the runs whose rows it reads."""
    representation = ctx.config.srs.representation
    tables = {"user_sequences": ctx.run_id, "item_index": ctx.run_id}
    if variant == "ci":
        tables[representation.pregroups_table] = representation.pregroups_run or ctx.run_id
    if variant == "tslrec":
        tables[representation.vectors.table] = representation.vectors.run or ctx.run_id
    return tables


def _finished(ctx: RunContext) -> set[Model]:
    """Models of this run in srs_training with their current identity; with a ledger, only those that also have
    their line there, so every model of a ledger sweep gets one."""
    if not ctx.lake.exists("srs_training"):
        return set()
    rows = ctx.lake.read_arrow("srs_training", where={"run_id": ctx.run_id}).to_pylist()
    current = {key: model_identity(ctx, *key) for key in {(r["backbone"], r["variant"]) for r in rows}}
    done = {(r["backbone"], r["variant"], r["seed"], current[r["backbone"], r["variant"]]) for r in rows
            if r["stage"] == "train" and r.get("settings_hash") == current[r["backbone"], r["variant"]]}
    if ctx.config.ledger.path:
        done &= ledger.recorded(ctx.config.ledger.path, ctx.run_id, "train")
    return {Model(backbone, variant, seed) for backbone, variant, seed, _ in done}


def _evaluate(
    ctx: RunContext, stage: str, data: Sequences, model: Model, trained: Trained, team: Team, checkpoint: Path | None
) -> Evaluated | None:
    """Test metrics (and valid, with the restored best weights) of one trained model, and how training went.
    Each rank scores its own users; rank 0 summarises them all in user order, as one process would."""
    srs = ctx.config.srs
    key = {"run_id": ctx.run_id, "dataset": ctx.config.dataset.name, "stage": stage, "backbone": model.backbone,
           "variant": model.variant, "seed": model.seed}
    rows = []
    # an item's training interactions over every rank's users: the popularity segments need the whole count
    popularity = sum(team.gather(np.bincount(data.items, minlength=data.n_items)))
    for split in SPLITS:
        evaluation = evaluation_set(data, split, srs.max_length)
        scored = per_user(trained.model, evaluation, srs.exclude_history, srs.eval_batch_size, team.device)
        parts = team.gather((evaluation.users, evaluation.history_lengths(), evaluation.targets, scored))
        if team.rank != 0:
            continue
        order = np.argsort(np.concatenate([part[0] for part in parts]), kind="stable")
        lengths, targets = (np.concatenate([part[i] for part in parts])[order] for i in (1, 2))
        metrics = {name: np.concatenate([part[3][name] for part in parts])[order] for name in scored}
        for row in summarize(metrics, lengths, popularity[targets], srs.activity_groups):
            rows.append({**key, "split": split, "user_group": row.user_group, "users": row.users,
                         "metric": row.metric, "value": row.value, "exclude_history": srs.exclude_history,
                         "config_hash": ctx.config_hash})
    if team.rank != 0:
        return None
    overall = {r["metric"]: r["value"] for r in rows if r["split"] == "test" and r["user_group"] == "all"}
    log.info("%s test: %s", model, ", ".join(f"{k} {v:.4f}" for k, v in overall.items()))
    training = {**key, "epochs": trained.epochs, "best_epoch": trained.best_epoch, "stopped_by": trained.stopped_by,
                "seconds_per_epoch": trained.seconds_per_epoch, "precision": trained.precision,
                "parameters": sum(p.numel() for p in trained.model.parameters() if p.requires_grad),
                "device": team.device.type, "processes": team.world, "config_hash": ctx.config_hash,
                "settings_hash": model_identity(ctx, model.backbone, model.variant)}
    vectors = trained.model.items.table().detach().cpu().numpy().astype(np.float32) if stage == "pretrain" else None
    return Evaluated(stage, model, rows, training, vectors, checkpoint)


def _write(ctx: RunContext, result: Evaluated) -> list[Written]:
    """One model's rows replace its earlier ones; then its checkpoint has served and goes."""
    within = {"stage": result.stage, "backbone": result.model.backbone, "variant": result.model.variant,
              "seed": result.model.seed}
    commit = ctx.commit(result.stage)
    written = [
        ctx.lake.write(pa.Table.from_pylist(result.metrics), "srs_metrics", "replace_run", commit, within=within),
        ctx.lake.write(pa.Table.from_pylist([result.training]), "srs_training", "replace_run", commit, within=within),
    ]
    if result.item_vectors is not None:
        written.append(_write_item_vectors(ctx, result.model.backbone, result.item_vectors))
    if ctx.config.ledger.path:
        ledger.append(ctx.config.ledger.path, ledger.entry(ctx.config, result.training, result.metrics))
    if result.checkpoint is not None:
        # this model's checkpoints (an ensemble's members too) and a save cut short; those of other settings (another
        # identity) once untouched for a while: a study may be training the same model with other settings beside
        identity = result.training["settings_hash"]
        for path in result.checkpoint.parent.glob(f"{_checkpoint_prefix(result.stage, result.model)}-*.pt*"):
            with contextlib.suppress(FileNotFoundError):
                if identity in path.name or time.time() - path.stat().st_mtime > OTHER_CHECKPOINTS_KEPT_S:
                    path.unlink()
        with contextlib.suppress(OSError):  # the run's folder and the checkpoint folder, once empty
            result.checkpoint.parent.rmdir()
            result.checkpoint.parent.parent.rmdir()
    return written


def _write_item_vectors(ctx: RunContext, backbone: str, vectors: np.ndarray) -> Written:
    """Stage 0's product: the item embedding table of a backbone, one row per item."""
    n, dim = vectors.shape
    table = pa.table({
        "run_id": pa.array([ctx.run_id] * n, pa.string()),
        "dataset": pa.array([ctx.config.dataset.name] * n, pa.string()),
        "backbone": pa.array([backbone] * n, pa.string()),
        "item_idx": pa.array(np.arange(n, dtype=np.int32)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim).cast(pa.list_(pa.float32())),
    })
    written = ctx.lake.write(table, "srs_item_embeddings", "replace_run", ctx.commit("pretrain"),
                             within={"backbone": backbone})
    log.info("srs_item_embeddings of %s: %d x %d", backbone, n, dim)
    return written
