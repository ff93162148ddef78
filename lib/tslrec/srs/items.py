"""How a recommender represents items; any backbone takes any of them.

base:   a learned ID embedding.
ci:     the ID embedding plus a learned embedding of the item's pre-group (table item_pregroups).
tslrec: a gated fusion of the ID embedding and a projection of an external item vector (the LLM's item
        embeddings; any table of item vectors, e.g. srs_item_embeddings): g = sigmoid(W [e; P v]),
        item = g * e + (1 - g) * P v.
Every representation keeps one extra all-zero row for the padding id (n_items).
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import torch
from torch import nn

from tslrec.config import RepresentationSection
from tslrec.context import RunContext
from tslrec.errors import TslrecError

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
        """The vectors of all real items (no padding row), for scoring."""
        return self.forward(torch.arange(self.n_items, device=self.ids.weight.device))


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


class GatedFusion(ItemRepresentation):
    def __init__(self, n_items: int, dim: int, vectors: np.ndarray, dropout: float) -> None:
        super().__init__(n_items, dim)
        padded = np.concatenate([vectors, np.zeros((1, vectors.shape[1]), dtype=vectors.dtype)])
        self.register_buffer("vectors", torch.as_tensor(padded, dtype=torch.float32))
        self.project = nn.Linear(vectors.shape[1], dim)
        self.gate = nn.Linear(2 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        own = self.ids(items)
        external = self.dropout(self.project(self.vectors[items]))
        gate = torch.sigmoid(self.gate(torch.cat([own, external], dim=-1)))
        fused = gate * own + (1 - gate) * external
        return fused * (items != self.pad).unsqueeze(-1)


def build_items(ctx: RunContext, variant: str, n_items: int, dim: int) -> ItemRepresentation:
    settings = ctx.config.srs.representation
    if variant == "base":
        return ItemRepresentation(n_items, dim)
    if variant == "ci":
        return WithPregroups(n_items, dim, load_pregroups(ctx, settings, n_items))
    return GatedFusion(n_items, dim, load_vectors(ctx, settings, n_items), settings.fusion_dropout)


def load_pregroups(ctx: RunContext, settings: RepresentationSection, n_items: int) -> np.ndarray:
    """group[item_idx] for every item of the dataset, from the pre-grouping of the configured run."""
    run = settings.pregroups_run or ctx.run_id
    name = settings.pregroups_table
    table = ctx.lake.read_arrow(name, where={"run_id": run}, columns=["item_idx", "group"])
    return _dense(table.column("item_idx").to_numpy(), table.column("group").to_numpy(), n_items,
                  f"table '{name}' (run {run})", "one group per item")


def load_vectors(ctx: RunContext, settings: RepresentationSection, n_items: int) -> np.ndarray:
    """vector[item_idx] for every item of the dataset: an (n_items x d) float matrix."""
    spec = settings.vectors
    run = spec.run or ctx.run_id
    table = ctx.lake.read_arrow(spec.table, where={"run_id": run})
    described = f"table '{spec.table}' (run {run}{''.join(f', {k}={v}' for k, v in spec.where.items())})"
    for column in ("item_idx", spec.column, *spec.where):
        if column not in table.column_names:
            raise TslrecError(f"{described} has no column '{column}'; its columns: {', '.join(table.column_names)}")
    for column, value in spec.where.items():
        table = table.filter(pc.equal(pc.cast(table[column], "string"), value))
    vectors = table.column(spec.column).combine_chunks()
    widths = pc.unique(pc.list_value_length(vectors)).to_pylist() if len(vectors) else []
    if len(widths) > 1:
        raise TslrecError(f"{described} holds vectors of different lengths {sorted(widths)}; expected one length")
    width = widths[0] if widths else 0
    matrix = vectors.flatten().to_numpy(zero_copy_only=False).reshape(len(vectors), width)
    return _dense(table.column("item_idx").to_numpy(), matrix, n_items, described,
                  f"shape ({n_items} x d): one vector per item")


def _dense(index: np.ndarray, values: np.ndarray, n_items: int, described: str, expected: str) -> np.ndarray:
    """values ordered by item index, after checking there is exactly one row for each of the n_items items."""
    if len(index) != n_items or len(np.unique(index)) != n_items or (len(index) and (index.min() < 0 or index.max() >= n_items)):
        missing = np.setdiff1d(np.arange(n_items), index)[:5].tolist()
        raise TslrecError(
            f"{described} has {len(index)} rows for {len(np.unique(index))} distinct items, but the dataset has "
            f"{n_items} items and needs {expected}"
            + (f" (missing item_idx {missing}...)" if missing else "")
            + "; re-run the stage that writes it for this run"
        )
    out = np.empty_like(values)
    out[index] = values
    return out
