"""How a recommender represents items; any backbone takes any of them.

base:   a learned ID embedding.
ci:     the ID embedding plus a learned embedding of the item's pre-group (table item_pregroups).
tslrec: a gated fusion of the ID embedding and a projection of an external item vector (the LLM's item
        embeddings; any table of item vectors, e.g. srs_item_embeddings): g = sigmoid(W [e; P v]),
        item = g * e + (1 - g) * P v, where v is standardised per dimension over the items (or whitened:
        srs.representation.vectors.prepare) and P starts at the scale of the ID embeddings. Other forms
        (srs.representation.fusion): residual, e + g * P v, keeps the ID embedding's full weight; input feeds
        the backbone the fused items and scores with e; categories reads each item's vector as a distribution
        over groups (stage 2's inferred categories, llm_item_embeddings.distribution) and adds the
        distribution-weighted sum of learned group embeddings to e: CI with the LLM's soft categories in place
        of the hard k-means group; align feeds e alone and adds a loss that turns e towards P v; dual is
        LLM-ESR's dual view (the backbone reads the ID view and an adapted LLM view, the scores add up).
Every representation keeps one extra all-zero row for the padding id (n_items).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from tslrec.config import Fusion, Prepare
from tslrec.context import RunContext
from tslrec.errors import TslrecError
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

    def scoring(self, items: torch.Tensor) -> torch.Tensor:
        """The vectors `items` score with: rows of table(). The sampled loss needs only its targets' and negatives'
        rows, and a fusion's whole table costs more than the rest of a step."""
        return self.forward(items)

    def table(self) -> torch.Tensor:
        """The vectors of all real items (no padding row), for scoring."""
        return self.scoring(torch.arange(self.n_items, device=self.ids.weight.device))

    def auxiliary_loss(self) -> torch.Tensor | None:
        """A term the training loop adds to every step's loss; None: the recommendation loss alone."""
        return None


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


def prepare_vectors(vectors: np.ndarray, how: Prepare, width: int) -> np.ndarray:
    """LLM hidden states share a large common offset (their norms are ~50 against ~0.2 for a new ID embedding)
    whose size depends on the LLM: fused raw, they swamp the ID part and the scores from the first step. So they
    are centred, then either scaled per dimension (standardise) or rotated onto their top `width` principal
    components scaled to unit variance (whiten: the few directions most of the LLM's variance lies in no longer
    dominate; LLM-ESR and AlphaFuse reduce and whiten so)."""
    centred = vectors.astype(np.float64) - vectors.mean(axis=0)
    if how == "standardise":
        spread = centred.std(axis=0)
        return centred / np.where(spread > 0, spread, 1.0)
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    spread = singular / np.sqrt(len(centred))
    if not len(spread) or spread[0] == 0:
        raise TslrecError("the item vectors are all the same: there is nothing to whiten; check the table's vectors")
    kept = min(width, int((spread > 1e-6 * spread[0]).sum()))
    return centred @ directions[:kept].T / spread[:kept]


class GatedFusion(ItemRepresentation):
    """P starts with outputs of the ID embeddings' size (the vectors are prepared by prepare_vectors)."""

    def __init__(self, n_items: int, dim: int, vectors: np.ndarray, dropout: float, form: Fusion = "convex",
                 prepare: Prepare = "standardise") -> None:
        super().__init__(n_items, dim)
        self.form = form
        prepared = prepare_vectors(vectors, prepare, dim)
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
        fused = own + gate * external if self.form == "residual" else gate * own + (1 - gate) * external
        return fused * (items != self.pad).unsqueeze(-1)

    def _projected(self, items: torch.Tensor) -> torch.Tensor:
        """P v of each item in `items`. A batch of sequences holds more items than the catalogue (512 x 50 against
        Beauty's 12,101): projecting every item once and picking rows then multiplies far fewer wide vectors."""
        if items.numel() > len(self.vectors):
            return self.project(self.vectors)[items]
        return self.project(self.vectors[items])

    def scoring(self, items: torch.Tensor) -> torch.Tensor:
        return self.ids(items) if self.form == "input" else self.forward(items)


class AlignedIds(ItemRepresentation):
    """The LLM vectors as a teacher, not an input (LLMEmb, LLM-ESR): the ID embeddings alone represent the items,
    and an auxiliary loss pulls each one towards P v of its item. An item with few interactions gets few gradients
    from the recommendation loss, so its embedding goes where the map P, learned on all items, puts its vector."""

    def __init__(self, n_items: int, dim: int, vectors: np.ndarray, weight: float, prepare: Prepare) -> None:
        super().__init__(n_items, dim)
        prepared = prepare_vectors(vectors, prepare, dim)
        self.register_buffer("vectors", torch.as_tensor(prepared, dtype=torch.float32))
        self.project = nn.Linear(prepared.shape[1], dim)
        self.weight = weight

    def auxiliary_loss(self) -> torch.Tensor:
        """weight x (1 - the mean cosine of e and P v over all items): cosines, so neither side's scale matters."""
        cosines = nn.functional.cosine_similarity(self.ids.weight[:self.n_items], self.project(self.vectors), dim=-1)
        return self.weight * (1.0 - cosines.mean())


class TwoViews(ItemRepresentation):
    """LLM-ESR's dual view: the ID embeddings (collaborative view) and the frozen LLM vectors through a trainable
    adapter of two linear maps (semantic view). The backbone reads one view at a time (`viewing`); an item scores
    with both side by side, so with the states of both views side by side its score is the sum of the two views'."""

    def __init__(self, n_items: int, dim: int, vectors: np.ndarray, prepare: Prepare) -> None:
        super().__init__(n_items, dim)
        prepared = prepare_vectors(vectors, prepare, dim)
        padded = np.concatenate([prepared, np.zeros((1, prepared.shape[1]))])
        self.register_buffer("vectors", torch.as_tensor(padded, dtype=torch.float32))
        middle = max(prepared.shape[1] // 2, 1)
        self.adapter = nn.Sequential(nn.Linear(prepared.shape[1], middle), nn.Linear(middle, dim))
        nn.init.xavier_normal_(self.adapter[0].weight)
        # outputs start at the scale of a new ID embedding, as the fusions' do
        nn.init.normal_(self.adapter[1].weight, std=INIT_STD / np.sqrt(middle))
        self.view = "collaborative"

    @contextlib.contextmanager
    def viewing(self, view: str) -> Iterator[None]:
        self.view, before = view, self.view
        try:
            yield
        finally:
            self.view = before

    def semantic(self, items: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.vectors[items]) * (items != self.pad).unsqueeze(-1)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.semantic(items) if self.view == "semantic" else self.ids(items)

    def scoring(self, items: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.ids(items), self.semantic(items)], dim=-1)


class SoftCategories(ItemRepresentation):
    """Only the groups' embeddings are learned from the distributions, so an item with few interactions still
    gets the signal its group mates share, as CI does, but from the LLM's view of the item's categories."""

    def __init__(self, n_items: int, dim: int, distributions: np.ndarray, described: str) -> None:
        super().__init__(n_items, dim)
        sums = distributions.sum(axis=1)
        if (distributions < 0).any() or not np.allclose(sums, 1.0, atol=1e-3):
            worst = int(np.argmax(np.abs(sums - 1.0) + (distributions < 0).any(axis=1)))
            raise TslrecError(
                f"{described}: fusion 'categories' needs one distribution per item (non-negative, summing to 1), "
                f"but item {worst} sums to {sums[worst]:.4g}; set srs.representation.vectors.column=distribution"
            )
        padded = np.concatenate([distributions, np.zeros((1, distributions.shape[1]))]).astype(np.float32)
        self.register_buffer("distributions", torch.as_tensor(padded))
        self.groups = nn.Linear(distributions.shape[1], dim, bias=False)
        nn.init.normal_(self.groups.weight, std=INIT_STD)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.ids(items) + self.groups(self.distributions[items])


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
    if settings.fusion == "categories":
        return SoftCategories(n_items, dim, vectors, f"table '{spec.table}' column '{spec.column}'")
    if settings.fusion == "dual":
        return TwoViews(n_items, dim, vectors, spec.prepare)
    if settings.fusion == "align":
        return AlignedIds(n_items, dim, vectors, settings.align_weight, spec.prepare)
    return GatedFusion(n_items, dim, vectors, settings.fusion_dropout, settings.fusion, spec.prepare)
