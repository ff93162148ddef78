"""Full-ranking evaluation: every user of a split ranks the target among all items."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tslrec.srs.backbones.base import Backbone
from tslrec.srs.data import EvaluationSet, ranges, trim_padding
from tslrec.srs.metrics import metric_names, per_user_metrics, rank_counts


@torch.no_grad()
def per_user(
    model: Backbone, data: EvaluationSet, exclude_history: bool, batch_size: int, device: torch.device
) -> dict[str, np.ndarray]:
    """Each metric for each evaluated user. With exclude_history, the items a user already has are ranked last,
    except the target itself (a repeated purchase still counts when the model ranks it first)."""
    model.eval()
    table = model.items.table()
    pad = model.items.pad
    lengths = data.history_lengths()
    # users of similar history length are scored together, so padding can be dropped where the backbone allows
    order = np.argsort(lengths, kind="stable")
    results = {name: np.empty(len(order)) for name in metric_names()}
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        inputs = data.inputs[chosen]
        if model.pad_invariant:
            (inputs,) = trim_padding(inputs, pad=pad)
        targets = torch.as_tensor(data.targets[chosen], device=device)
        scores = model(torch.as_tensor(inputs, device=device), torch.as_tensor(data.users[chosen], device=device))
        scores = scores[:, -1] @ table.T
        if exclude_history:
            target_scores = scores.gather(1, targets[:, None])
            rows = np.repeat(np.arange(len(chosen)), lengths[chosen])
            seen = data.history_items[ranges(data.history_offsets[chosen], lengths[chosen])]
            scores[torch.as_tensor(rows, device=device), torch.as_tensor(seen, device=device)] = float("-inf")
            scores.scatter_(1, targets[:, None], target_scores)
        above, tied = rank_counts(scores, targets)
        for name, values in per_user_metrics(above, tied).items():
            results[name][chosen] = values.cpu().numpy()
    return results


@dataclass(frozen=True)
class MetricRow:
    user_group: str
    users: int
    metric: str
    value: float


def summarize(metrics: dict[str, np.ndarray], history_lengths: np.ndarray, groups: int) -> list[MetricRow]:
    """The mean over all users, and over groups of users of equal size ordered by history length."""
    rows = [MetricRow("all", len(history_lengths), name, float(values.mean())) for name, values in metrics.items()]
    if groups > 1 and len(history_lengths) >= groups:
        order = np.argsort(history_lengths, kind="stable")
        for number, members in enumerate(np.array_split(order, groups), start=1):
            lengths = history_lengths[members]
            label = f"{number}/{groups} (length {lengths.min()}-{lengths.max()})"
            rows += [MetricRow(label, len(members), name, float(values[members].mean())) for name, values in metrics.items()]
    return rows
