"""Full-ranking evaluation: every user of a split ranks the target among all items."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from tslrec.srs.backbones.base import Backbone
from tslrec.srs.data import EvaluationSet, ranges, trim_padding
from tslrec.srs.metrics import metric_names, per_user_metrics, rank_counts


def final_states(model: Backbone, inputs: np.ndarray, users: np.ndarray, lengths: np.ndarray, batch_size: int,
                 device: torch.device) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(rows, their states after the last input item), batch by batch. Rows of similar length go together, so
    padding can be dropped where the backbone allows. The model must be in eval mode."""
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batch = inputs[chosen]
        if model.pad_invariant:
            (batch,) = trim_padding(batch, pad=model.items.pad)
        yield chosen, model(torch.as_tensor(batch, device=device), torch.as_tensor(users[chosen], device=device))[:, -1]


@torch.no_grad()
def per_user(
    model: Backbone, data: EvaluationSet, exclude_history: bool, batch_size: int, device: torch.device
) -> dict[str, np.ndarray]:
    """Each metric for each evaluated user. With exclude_history, the items a user already has are ranked last,
    except the target itself (a repeated purchase still counts when the model ranks it first)."""
    model.eval()
    table = model.items.table()
    lengths = data.history_lengths()
    results = {name: np.empty(len(lengths)) for name in metric_names()}
    for chosen, states in final_states(model, data.inputs, data.users, lengths, batch_size, device):
        targets = torch.as_tensor(data.targets[chosen], device=device)
        scores = states @ table.T
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


TAIL_INTERACTIONS = 4  # a tail item has at most this many training interactions (LLM-ESR's and LLMEmb's cut)
TAIL_GROUP = f"items tail (popularity <= {TAIL_INTERACTIONS})"  # the user_group of the users with a tail target
COLD_GROUP = "items cold (popularity 0)"  # of those whose target never occurs in training


def summarize(
    metrics: dict[str, np.ndarray], history_lengths: np.ndarray, target_popularity: np.ndarray, groups: int
) -> list[MetricRow]:
    """The mean over all users; over groups of users of equal size ordered by history length; and by the target
    item's training popularity: groups of equal size ordered by it, the tail items and the cold ones (none in
    training, A-LLMRec's scenario), where LLM item knowledge is expected to help most."""
    segments = {"all": np.arange(len(history_lengths))}
    if groups > 1 and len(history_lengths) >= groups:
        for label, members in _ordered_groups(history_lengths, groups):
            segments[f"{label} (length {history_lengths[members].min()}-{history_lengths[members].max()})"] = members
        for label, members in _ordered_groups(target_popularity, groups):
            counts = target_popularity[members]
            segments[f"items {label} (popularity {counts.min()}-{counts.max()})"] = members
    segments[TAIL_GROUP] = np.flatnonzero(target_popularity <= TAIL_INTERACTIONS)
    segments[COLD_GROUP] = np.flatnonzero(target_popularity == 0)
    return [MetricRow(label, len(members), name, float(values[members].mean()))
            for label, members in segments.items() if len(members) for name, values in metrics.items()]


def _ordered_groups(key: np.ndarray, groups: int) -> list[tuple[str, np.ndarray]]:
    order = np.argsort(key, kind="stable")
    return [(f"{number}/{groups}", members) for number, members in enumerate(np.array_split(order, groups), start=1)]


def is_activity_group(user_group: str) -> bool:
    """Whether an srs_metrics user_group is one of the groups by history length."""
    return user_group[:1].isdigit()
