"""How a recommender represents items; any backbone takes any of them.

base:   a learned ID embedding.
ci:     the ID embedding plus a learned embedding of the item's pre-group (table item_pregroups).
tslrec: a gated fusion of the ID embedding and a projection of an external item vector (the LLM's item
        embeddings; any table of item vectors, e.g. srs_item_embeddings): g = sigmoid(W [e; P v]),
        item = g * e + (1 - g) * P v, where v is standardised per dimension over the items and P starts at the
        scale of the ID embeddings. (Other forms the method study tried and removed, none better: a residual
        fusion, the fused items as input only, the LLM's soft categories, an alignment loss, LLM-ESR's dual view,
        whitening; benchmarks/RESULTS.md.)
Every representation keeps one extra all-zero row for the padding id (n_items).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tslrec.context import RunContext
from tslrec.itemtables import item_groups, item_vectors
from tslrec.srs.dropout import Dropout

INIT_STD = 0.02


class ItemRepresentation(nn.Module):
    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.dim = dim
        self.ids = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        nn.init.normal_(self.ids.weight, std=INIT_STD)
        with torch.no_grad():
            self.ids.weight[n_items].zero_()

    @property
    def pad(self) -> int:
        return self.n_items

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.ids(items)

    def table(self) -> torch.Tensor:
        """The vectors of all real items (no padding row), for scoring: an item scores with the vector it is fed as.
        The sampled loss takes only its targets' and negatives' rows (the module called on them): a fusion's whole
        table costs more than the rest of a step."""
        return self(torch.arange(self.n_items, device=self.ids.weight.device))


class WithPregroups(ItemRepresentation):
    def __init__(self, n_items: int, dim: int, groups: np.ndarray) -> None:
        super().__init__(n_items, dim)
        n_groups = int(groups.max()) + 1
        self.register_buffer("group_of", torch.as_tensor(np.append(groups, n_groups), dtype=torch.long))
        self.groups = nn.Embedding(n_groups + 1, dim, padding_idx=n_groups)
        nn.init.normal_(self.groups.weight, std=INIT_STD)
        with torch.no_grad():
            self.groups.weight[n_groups].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.ids(items) + self.groups(self.group_of[items])


def standardise(vectors: np.ndarray) -> np.ndarray:
    """LLM hidden states share a large common offset (their norms are ~50 against ~0.2 for a new ID embedding)
    whose size depends on the LLM: fused raw, they swamp the ID part and the scores from the first step. So they
    are centred and scaled per dimension."""
    centred = vectors.astype(np.float64) - vectors.mean(axis=0)
    spread = centred.std(axis=0)
    return centred / np.where(spread > 0, spread, 1.0)


class GatedFusion(ItemRepresentation):
    """P starts with outputs of the ID embeddings' size (the vectors are standardised)."""

    def __init__(self, n_items: int, dim: int, vectors: np.ndarray, dropout: float) -> None:
        super().__init__(n_items, dim)
        prepared = standardise(vectors)
        padded = np.concatenate([prepared, np.zeros((1, prepared.shape[1]))])
        self.register_buffer("vectors", torch.as_tensor(padded, dtype=torch.float32))
        self.project = nn.Linear(prepared.shape[1], dim)
        nn.init.normal_(self.project.weight, std=INIT_STD / np.sqrt(prepared.shape[1]))
        nn.init.zeros_(self.project.bias)
        self.gate = nn.Linear(2 * dim, dim)
        self.dropout = Dropout(dropout)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        own = self.ids(items)
        external = self.dropout(self._projected(items))
        gate = torch.sigmoid(self.gate(torch.cat([own, external], dim=-1)))
        fused = gate * own + (1 - gate) * external
        return fused * (items != self.pad).unsqueeze(-1)

    def _projected(self, items: torch.Tensor) -> torch.Tensor:
        """P v of each item in `items`. A batch of sequences holds more items than the catalogue (512 x 50 against
        Beauty's 12,101): projecting every item once and picking rows then multiplies far fewer wide vectors."""
        if items.numel() > len(self.vectors):
            return self.project(self.vectors)[items]
        return self.project(self.vectors[items])


def build_items(ctx: RunContext, variant: str, n_items: int, dim: int) -> ItemRepresentation:
    """The item representation of a variant, reading its table (of this run unless configured) through the lake."""
    settings = ctx.config.srs.representation
    if variant == "base":
        return ItemRepresentation(n_items, dim)
    if variant == "ci":
        groups = item_groups(ctx, settings.pregroups_table, settings.pregroups_run or ctx.run_id, n_items)
        return WithPregroups(n_items, dim, groups)
    spec = settings.vectors
    vectors = item_vectors(ctx, spec.table, spec.run or ctx.run_id, spec.column, spec.where, n_items)
    return GatedFusion(n_items, dim, vectors, settings.fusion_dropout)
