"""Full-ranking metrics with ties handled exactly.

The target's rank is 0-based: the number of items scored above it. Items scored exactly like the target are
ordered at random, so HR@k and NDCG@k are their expected values over that order: a model that scores every
item the same gets HR@k = k / n_items, not 1.
"""

from __future__ import annotations

import torch

KS = (5, 10)


def rank_counts(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(items scored above the target, other items scored exactly like it), per row."""
    target_scores = scores.gather(1, targets[:, None])
    above = (scores > target_scores).sum(dim=1)
    tied = (scores == target_scores).sum(dim=1) - 1
    return above, tied


def hit_and_ndcg(above: torch.Tensor, tied: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected HR@k and NDCG@k when the target's position is uniform over above .. above + tied."""
    last = above + tied
    first_out = torch.clamp(torch.minimum(last + 1, torch.full_like(last, k)), min=0)
    inside = torch.clamp(first_out - above, min=0).double()
    count = (tied + 1).double()
    return inside / count, (_discount_sum(first_out) - _discount_sum(torch.minimum(above, first_out))) / count


def _discount_sum(n: torch.Tensor) -> torch.Tensor:
    """sum over positions p < n of 1 / log2(p + 2)."""
    limit = int(n.max().item()) + 1 if n.numel() else 1
    positions = torch.arange(limit, dtype=torch.float64, device=n.device)
    prefix = torch.cat([positions.new_zeros(1), torch.cumsum(1.0 / torch.log2(positions + 2), 0)])
    return prefix[n]


def metric_names() -> list[str]:
    return [f"{name}@{k}" for k in KS for name in ("HR", "NDCG")]


def per_user_metrics(above: torch.Tensor, tied: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for k in KS:
        out[f"HR@{k}"], out[f"NDCG@{k}"] = hit_and_ndcg(above, tied, k)
    return out
