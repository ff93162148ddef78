"""Training one recommender: Adam, full-softmax cross-entropy (or BCE with sampled negatives), early stopping on
validation NDCG@10 with the best weights restored."""

from __future__ import annotations

import copy
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tslrec.config import Config, SrsSection
from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.logs import get_logger
from tslrec.srs.backbones import build_backbone
from tslrec.srs.backbones.base import Backbone
from tslrec.srs.data import (
    EvaluationSet, Sequences, TrainingRows, evaluation_set, sortish_batches, training_batch, training_rows,
    trim_padding,
)
from tslrec.srs.evaluate import per_user
from tslrec.srs.items import build_items
from tslrec.srs.team import Team

log = get_logger(__name__)

SELECTION_METRIC = "NDCG@10"


@dataclass
class Trained:
    model: Backbone
    epochs: int
    best_epoch: int
    seconds_per_epoch: float
    valid: dict[str, float]
    stopped_by: str  # patience | max_epochs | max_seconds


def device_for(config: Config) -> torch.device:
    wanted = config.srs.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(wanted)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_threads(config: Config, processes: int = 1) -> None:
    """srs.threads torch threads, or the machine's cores shared by the processes that train at once."""
    torch.set_num_threads(config.srs.threads or max(1, (os.cpu_count() or 1) // processes))


@dataclass
class _Progress:
    """Where training stands after an epoch: what a checkpoint holds beside the weights and the optimizer."""

    epoch: int = 0
    seconds: float = 0.0
    best_score: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    best_valid: dict[str, float] = field(default_factory=dict)
    stopped_by: str | None = None


def train_model(
    ctx: RunContext, data: Sequences, backbone: str, variant: str, seed: int, team: Team | None = None,
    checkpoint: Path | None = None,
) -> Trained:
    """Trains on `data` (with a team of several ranks, this rank's shard of the users), `batch_size / ranks` rows
    per rank and step. With a checkpoint file, the state after every epoch is saved there (by rank 0) and a
    training that finds one resumes after its epoch, with the same result as if it had never stopped: each
    epoch's random draws depend only on the seed, the rank and the epoch."""
    config = ctx.config
    srs = config.srs
    settings = getattr(srs.backbones, backbone)
    team = team or Team(device_for(config))
    model, optimizer = build_model(ctx, data, backbone, variant, seed, team)
    rows = training_rows(data, model.causal)
    valid = evaluation_set(data, "valid", srs.max_length)
    batch_size = rank_batch_size(settings.batch_size, team)
    label = f"{backbone}/{variant}/seed {seed}"
    if team.any(len(rows.users) == 0):
        raise TslrecError(f"{label}: a rank of {team.world} has no training rows ({len(rows.users)} here); "
                          f"use fewer srs.distributed.processes for this dataset")
    progress = _resume(checkpoint, model, optimizer, team.device) if checkpoint else _Progress()
    if team.any(progress.epoch != team.share(progress.epoch)):
        raise TslrecError(f"{label}: the ranks found different checkpoints at {checkpoint}; srs.checkpoints must be "
                          f"one folder every rank reaches")
    log.info("%s: %d parameters, %d training rows, %d validation users, %s%s%s",
             label, sum(p.numel() for p in model.parameters() if p.requires_grad), len(rows.users), len(valid.targets),
             team.device, f", rank {team.rank} of {team.world}, {batch_size} rows per rank and step" if team.world > 1 else "",
             f", resumed after epoch {progress.epoch}" if progress.epoch else "")
    lengths = np.minimum(rows.lengths, srs.max_length)
    while progress.stopped_by is None:
        epoch = progress.epoch + 1
        started = time.monotonic()
        draws = np.random.SeedSequence([seed, team.rank, epoch])
        rng = np.random.default_rng(draws)
        torch.manual_seed(int(draws.generate_state(1)[0]))
        batches = sortish_batches(lengths, batch_size, srs.batch_sort_window, rng)
        losses = train_steps(model, optimizer, data, rows, batches, srs, team)
        metrics = _validate(model, valid, srs.exclude_history, srs.eval_batch_size, team)
        score = metrics[SELECTION_METRIC]
        if score > progress.best_score:
            progress.best_score, progress.best_epoch, progress.best_valid = score, epoch, metrics
            progress.best_state = copy.deepcopy(model.state_dict())
        progress.epoch = epoch
        progress.seconds += time.monotonic() - started
        progress.stopped_by = _stop(progress, srs.max_epochs, srs.patience, srs.max_seconds, team)
        per_epoch = progress.seconds / epoch
        log.info(
            "%s epoch %d/%d: loss %.4f, valid HR@10 %.4f NDCG@10 %.4f (best %.4f at epoch %d), %.1fs; "
            "stops in %.0fs without a better epoch, %.0fs at the latest",
            label, epoch, srs.max_epochs, float(np.mean(losses)) if losses else float("nan"), metrics["HR@10"], score,
            progress.best_score, progress.best_epoch, time.monotonic() - started,
            per_epoch * min(srs.max_epochs - epoch, srs.patience - (epoch - progress.best_epoch)),
            per_epoch * (srs.max_epochs - epoch),
        )
        if progress.stopped_by == "max_seconds":
            log.warning("%s: stopped after %.0fs (srs.max_seconds), keeping epoch %d", label, progress.seconds,
                        progress.best_epoch)
        if checkpoint and team.rank == 0:
            _save(checkpoint, model, optimizer, progress)
    model.load_state_dict(progress.best_state)
    return Trained(model, progress.epoch, progress.best_epoch, progress.seconds / max(progress.epoch, 1),
                   progress.best_valid, progress.stopped_by)


def build_model(
    ctx: RunContext, data: Sequences, backbone: str, variant: str, seed: int, team: Team
) -> tuple[Backbone, torch.optim.Optimizer]:
    """The same initial weights on every rank (rank 0's), and its optimizer."""
    settings = getattr(ctx.config.srs.backbones, backbone)
    seed_everything(seed)
    items = build_items(ctx, variant, data.n_items, settings.hidden)
    model = build_backbone(backbone, items, data.n_users, ctx.config).to(team.device)
    team.broadcast_parameters(model)
    return model, torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def rank_batch_size(batch_size: int, team: Team) -> int:
    """Rows per rank and step: the ranks together take the configured batch (rounded up)."""
    return -(-batch_size // team.world)


def train_steps(
    model: Backbone, optimizer: torch.optim.Optimizer, data: Sequences, rows: TrainingRows, batches: list[np.ndarray],
    srs: SrsSection, team: Team, steps: int | None = None,
) -> list[float]:
    """One pass over `batches` (or `steps` of them); every rank takes as many steps, short shards wrap around."""
    model.train()
    losses = []
    for step in range(steps if steps is not None else int(team.max(len(batches)))):
        pick = batches[step % len(batches)]
        inputs, targets, users = training_batch(data, rows, pick, srs.max_length, model.causal)
        if model.pad_invariant and model.causal:
            inputs, targets = trim_padding(inputs, targets, pad=data.pad)
        elif model.pad_invariant:
            (inputs,) = trim_padding(inputs, pad=data.pad)
        inputs, targets, users = (torch.as_tensor(a, device=team.device) for a in (inputs, targets, users))
        loss = _loss(model, model(inputs, users), targets, srs.loss, data.pad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        team.average_gradients(model)
        optimizer.step()
        losses.append(loss.item())
    return losses


def _stop(progress: _Progress, max_epochs: int, patience: int, max_seconds: float | None, team: Team) -> str | None:
    if progress.epoch - progress.best_epoch >= patience:
        return "patience"
    if progress.epoch >= max_epochs:
        return "max_epochs"
    # the ranks' clocks differ: one rank over the budget stops them all
    if max_seconds is not None and team.any(progress.seconds >= max_seconds):
        return "max_seconds"
    return None


def _validate(model: Backbone, valid: EvaluationSet, exclude_history: bool, batch_size: int, team: Team) -> dict[str, float]:
    """The mean of each metric over every rank's validation users."""
    metrics = per_user(model, valid, exclude_history, batch_size, team.device)
    sums = [float(values.sum()) for values in metrics.values()] + [float(len(valid.targets))]
    totals = team.all_sum(torch.tensor(sums, dtype=torch.float64, device=team.device)).tolist()
    return {name: total / max(totals[-1], 1.0) for name, total in zip(metrics, totals)}


def _save(path: Path, model: Backbone, optimizer: torch.optim.Optimizer, progress: _Progress) -> None:
    """Written beside and renamed over the last one, so a kill while saving leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "progress": progress}, partial)
    os.replace(partial, path)


def _resume(path: Path, model: Backbone, optimizer: torch.optim.Optimizer, device: torch.device) -> _Progress:
    if not path.is_file():
        return _Progress()
    state = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["progress"]


def _loss(model: Backbone, states: torch.Tensor, targets: torch.Tensor, kind: str, pad: int) -> torch.Tensor:
    if model.causal:
        real = targets != pad
        states, targets = states[real], targets[real]
    else:
        states = states[:, -1]
    table = model.items.table()
    if kind == "ce":
        return F.cross_entropy(states @ table.T, targets)
    negatives = torch.randint(0, table.shape[0], targets.shape, device=targets.device)
    positive = (states * table[targets]).sum(-1)
    negative = (states * table[negatives]).sum(-1)
    return F.binary_cross_entropy_with_logits(positive, torch.ones_like(positive)) + F.binary_cross_entropy_with_logits(
        negative, torch.zeros_like(negative)
    )
