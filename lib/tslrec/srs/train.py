"""Training one recommender: Adam, full-softmax cross-entropy (or BCE with sampled negatives), early stopping on
validation NDCG@10 with the best weights restored."""

from __future__ import annotations

import copy
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tslrec.config import Config
from tslrec.context import RunContext
from tslrec.logs import get_logger
from tslrec.srs.backbones import build_backbone
from tslrec.srs.backbones.base import Backbone
from tslrec.srs.data import Sequences, evaluation_set, sortish_batches, training_batch, training_rows, trim_padding
from tslrec.srs.evaluate import per_user
from tslrec.srs.items import build_items

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


def train_model(ctx: RunContext, data: Sequences, backbone: str, variant: str, seed: int) -> Trained:
    config = ctx.config
    srs = config.srs
    settings = getattr(srs.backbones, backbone)
    device = device_for(config)
    seed_everything(seed)
    model = build_backbone(backbone, build_items(ctx, variant, data.n_items, settings.hidden), data.n_users, config)
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    rows = training_rows(data, model.causal)
    valid = evaluation_set(data, "valid", srs.max_length)
    rng = np.random.default_rng(seed)
    label = f"{backbone}/{variant}/seed {seed}"
    log.info("%s: %d parameters, %d training rows, %d validation users, %s",
             label, sum(p.numel() for p in model.parameters() if p.requires_grad), len(rows.users), len(valid.targets), device)
    best_score, best_epoch, best_state, best_valid = -1.0, 0, None, {}
    started = time.monotonic()
    epoch, stopped_by = 0, "max_epochs"
    for epoch in range(1, srs.max_epochs + 1):
        epoch_started = time.monotonic()
        model.train()
        losses = []
        lengths = np.minimum(rows.lengths, srs.max_length)
        for pick in sortish_batches(lengths, settings.batch_size, srs.batch_sort_window, rng):
            inputs, targets, users = training_batch(data, rows, pick, srs.max_length, model.causal)
            if model.pad_invariant and model.causal:
                inputs, targets = trim_padding(inputs, targets, pad=data.pad)
            elif model.pad_invariant:
                (inputs,) = trim_padding(inputs, pad=data.pad)
            inputs, targets, users = (torch.as_tensor(a, device=device) for a in (inputs, targets, users))
            loss = _loss(model, model(inputs, users), targets, srs.loss, data.pad)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        metrics = {k: float(v.mean()) for k, v in per_user(model, valid, srs.exclude_history, srs.eval_batch_size, device).items()}
        score = metrics[SELECTION_METRIC]
        if score > best_score:
            best_score, best_epoch, best_valid = score, epoch, metrics
            best_state = copy.deepcopy(model.state_dict())
        per_epoch = (time.monotonic() - started) / epoch
        log.info(
            "%s epoch %d/%d: loss %.4f, valid HR@10 %.4f NDCG@10 %.4f (best %.4f at epoch %d), %.1fs; "
            "stops in %.0fs without a better epoch, %.0fs at the latest",
            label, epoch, srs.max_epochs, float(np.mean(losses)) if losses else float("nan"), metrics["HR@10"], score,
            best_score, best_epoch, time.monotonic() - epoch_started,
            per_epoch * min(srs.max_epochs - epoch, srs.patience - (epoch - best_epoch)), per_epoch * (srs.max_epochs - epoch),
        )
        if epoch - best_epoch >= srs.patience:
            stopped_by = "patience"
            break
        if srs.max_seconds is not None and time.monotonic() - started >= srs.max_seconds and epoch < srs.max_epochs:
            stopped_by = "max_seconds"
            log.warning("%s: stopped after %.0fs (srs.max_seconds), keeping epoch %d", label,
                        time.monotonic() - started, best_epoch)
            break
    model.load_state_dict(best_state)
    return Trained(model, epoch, best_epoch, (time.monotonic() - started) / max(epoch, 1), best_valid, stopped_by)


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
