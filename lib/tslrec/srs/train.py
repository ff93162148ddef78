"""Training one recommender: Adam, full-softmax cross-entropy (or BCE with sampled negatives), early stopping on
validation NDCG@10 with the best weights restored."""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import os
import pickle
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tslrec.config import Config, SrsSection
from tslrec.context import RunContext
from tslrec.errors import TslrecError
from tslrec.logs import get_logger
from tslrec.seeds import draws_at
from tslrec.srs.backbones import build_backbone
from tslrec.srs.backbones.base import Backbone
from tslrec.srs.data import (
    EvaluationSet, Sequences, TrainingRows, evaluation_set, sortish_batches, training_batch, training_rows,
    trim_padding,
)
from tslrec.srs.evaluate import per_user
from tslrec.srs.items import build_items
from tslrec.srs.loss import full_softmax, one_negative
from tslrec.srs.precision import PRECISION_NAMES, training_dtype
from tslrec.srs.team import Team

log = get_logger(__name__)

SELECTION_METRIC = "NDCG@10"
# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


@dataclass
class Trained:
    model: Backbone
    epochs: int
    best_epoch: int
    seconds_per_epoch: float
    valid: dict[str, float]
    stopped_by: str  # patience | max_epochs | max_seconds
    precision: str  # fp32 | bf16: the precision of the full-softmax scores in training


def device_for(config: Config) -> torch.device:
    wanted = config.srs.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(wanted)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_up_cpu(config: Config, processes: int = 1) -> None:
    """srs.threads torch threads, or the machine's cores shared by the processes that train at once; and freed
    memory kept for the next step."""
    torch.set_num_threads(config.srs.threads or max(1, (os.cpu_count() or 1) // processes))
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """glibc hands blocks of a step's size (MBs) back to the kernel when they are freed and takes them again, page
    by page, at the next step: thousands of page faults a step (FMLP-Rec on Beauty: 5-9k a step, 5-10% of its
    time). Blocks up to 32 MB (glibc's largest threshold) now come from the heap, and the heap is not trimmed
    below 2 GB free: the process keeps its peak memory for its next step, as training does anyway. Other C
    libraries: unchanged."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # mallopt takes an int: free space above 2 GB is trimmed
    libc.mallopt(M_MMAP_THRESHOLD, 2**25)


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
    rows = training_rows(data, model.every_position)
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
    dtype = training_dtype(srs.precision, team.device)
    log.info("%s: %d parameters, %d training rows, %d validation users, %s, %s%s%s",
             label, sum(p.numel() for p in model.parameters() if p.requires_grad), len(rows.users), len(valid.targets),
             team.device, PRECISION_NAMES[dtype], f", rank {team.rank} of {team.world}, {batch_size} rows per rank and step" if team.world > 1 else "",
             f", resumed after epoch {progress.epoch}" if progress.epoch else "")
    while progress.stopped_by is None:
        epoch = progress.epoch + 1
        started = time.monotonic()
        rng = draws_at(seed, team.rank, epoch)
        batches = epoch_batches(model, rows, srs, batch_size, rng)
        losses = train_steps(model, optimizer, data, rows, batches, srs, team, dtype=dtype)
        progress.epoch = epoch
        # the ranks' clocks differ: one rank over the budget stops them all
        over_time = srs.max_seconds is not None and team.any(
            progress.seconds + time.monotonic() - started >= srs.max_seconds)
        metrics = None
        if epoch % srs.eval_every == 0 or epoch >= srs.max_epochs or over_time:
            metrics = _validate(model, valid, srs.exclude_history, srs.eval_batch_size, team)
            if metrics[SELECTION_METRIC] > progress.best_score:
                progress.best_score, progress.best_epoch, progress.best_valid = metrics[SELECTION_METRIC], epoch, metrics
                progress.best_state = copy.deepcopy(model.state_dict())
            progress.stopped_by = "max_seconds" if over_time else _stop(progress, srs)
        progress.seconds += time.monotonic() - started
        _log_epoch(label, progress, srs, float(np.mean(losses)) if losses else float("nan"), metrics,
                   time.monotonic() - started)
        if checkpoint and team.rank == 0:
            _save(checkpoint, model, optimizer, progress)
    model.load_state_dict(progress.best_state)
    return Trained(model, progress.epoch, progress.best_epoch, progress.seconds / max(progress.epoch, 1),
                   progress.best_valid, progress.stopped_by, PRECISION_NAMES[dtype])


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


def epoch_batches(
    model: Backbone, rows: TrainingRows, srs: SrsSection, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Prefix rows in batches of similar lengths (less padding; each row is one target, so no weight changes);
    sequence rows in random batches: the loss is a mean over a batch's positions, and batches of short sequences
    would weight their positions up."""
    window = 1 if model.every_position else srs.batch_sort_window
    return sortish_batches(np.minimum(rows.lengths, srs.max_length), batch_size, window, rng)


def train_steps(
    model: Backbone, optimizer: torch.optim.Optimizer, data: Sequences, rows: TrainingRows, batches: list[np.ndarray],
    srs: SrsSection, team: Team, steps: int | None = None, dtype: torch.dtype = torch.float32,
) -> list[float]:
    """One pass over `batches` (or `steps` of them); every rank takes as many steps, short shards wrap around.
    The scoring matmuls of the loss run in `dtype`, and so does the forward pass of a backbone that autocasts;
    everything else in float32."""
    model.train()
    losses = []
    for step in range(steps if steps is not None else int(team.max(len(batches)))):
        pick = batches[step % len(batches)]
        inputs, targets, users = training_batch(data, rows, pick, srs.max_length, model.every_position)
        if model.pad_invariant and model.every_position:
            inputs, targets = trim_padding(inputs, targets, pad=data.pad)
        elif model.pad_invariant:
            (inputs,) = trim_padding(inputs, pad=data.pad)
        inputs, targets, users = (torch.as_tensor(a, device=team.device) for a in (inputs, targets, users))
        with torch.autocast(team.device.type, dtype=dtype, enabled=model.autocast and dtype != torch.float32):
            states = model(inputs, users)
        loss = _loss(model, states.float(), targets, srs, data.pad, dtype)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        team.average_gradients(model)
        optimizer.step()
        losses.append(loss.detach())
    return [float(value) for value in torch.stack(losses).cpu()] if losses else []


def _stop(progress: _Progress, srs: SrsSection) -> str | None:
    """After a validation: patience counts validations without a better one, from min_epochs on."""
    if progress.epoch >= srs.max_epochs:
        return "max_epochs"
    if progress.epoch >= srs.min_epochs and progress.epoch - progress.best_epoch >= srs.patience * srs.eval_every:
        return "patience"
    return None


def _log_epoch(label: str, progress: _Progress, srs: SrsSection, loss: float, metrics: dict[str, float] | None,
               seconds: float) -> None:
    per_epoch = progress.seconds / progress.epoch
    line = f"{label} epoch {progress.epoch}/{srs.max_epochs}: loss {loss:.4f}, {seconds:.1f}s"
    if metrics is not None:
        line += (f"; valid HR@10 {metrics['HR@10']:.4f} NDCG@10 {metrics[SELECTION_METRIC]:.4f} "
                 f"(best {progress.best_score:.4f} at epoch {progress.best_epoch})")
    patience_end = max(progress.best_epoch + srs.patience * srs.eval_every, srs.min_epochs)
    log.info("%s; stops in %.0fs without a better epoch, %.0fs at the latest", line,
             per_epoch * max(min(srs.max_epochs, patience_end) - progress.epoch, 0),
             per_epoch * (srs.max_epochs - progress.epoch))
    if progress.stopped_by == "max_seconds":
        log.warning("%s: stopped after %.0fs (srs.max_seconds), keeping epoch %d", label, progress.seconds,
                    progress.best_epoch)


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
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "progress": dataclasses.asdict(progress)}, partial)
    os.replace(partial, path)


def _resume(path: Path, model: Backbone, optimizer: torch.optim.Optimizer, device: torch.device) -> _Progress:
    """Checkpoints hold tensors and plain types only, and are read so: a file planted in the shared checkpoint
    folder cannot run code through unpickling."""
    if not path.is_file():
        return _Progress()
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TslrecError(f"{path} is not a recommender checkpoint of this version (it holds objects other than "
                          f"tensors and plain values, and is not loaded); delete it to train from the start") from exc
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return _Progress(**state["progress"])


def _loss(
    model: Backbone, states: torch.Tensor, targets: torch.Tensor, srs: SrsSection, pad: int, dtype: torch.dtype
) -> torch.Tensor:
    if model.every_position:
        real = targets != pad
        states, targets = states[real], targets[real]
    else:
        states = states[:, -1]
    if srs.loss == "ce":
        return full_softmax(states, model.items.table(), targets, srs.loss_chunk_mb, dtype)
    return one_negative(states, model.items, model.items.n_items, targets)
