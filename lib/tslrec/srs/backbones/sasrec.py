"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence.

As in the reference code behind Xu et al.'s CE results (their public SASRec): item embeddings scaled by sqrt(d)
plus learned positions over a fixed window of max_length (the most recent item always at the last position),
xavier-initialised; each block normalises the queries, attends over the earlier positions of the window with
dropout on the attention weights only, projects and adds the result to the block's input, then normalises and
applies a position-wise two-layer feed-forward network with a residual connection; a final layer norm. Padding
positions are zeroed but stay attendable: their keys are all the same learned "attend to nothing" slot, so a
state depends on how many padding slots precede the items, and every row is a window of max_length.

Computed without the full window's cost: a row's padding slots are identical, so a row with n items attends over
a narrower window (a power of two above n) whose first slot stands for the k padding slots left out, with log k
added to its score and a dropout multiplier of Binomial(k, 1 - p) / (k (1 - p)), which is what the k slots'
independent dropouts add up to. The states and their gradients are the full window's (a test compares them) and
the training the same in distribution; on Beauty, where a row holds 7 items of its 50 slots on average, the
attention costs a fraction of the full window's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tslrec.config import SASRecSection
from tslrec.srs.backbones.base import Backbone, xavier_ids
from tslrec.srs.dropout import Dropout
from tslrec.srs.items import ItemRepresentation


LAYER_NORM_EPS = 1e-8


@dataclass(frozen=True)
class _Group:
    """The rows of a batch whose attention runs over the same narrowed window."""

    rows: int
    width: int  # the last `width` slots of the full window
    window: torch.Tensor  # where the group's real positions lie in its flattened (rows, width) window
    states: torch.Tensor  # which of the batch's real-position states they are
    merged: int  # how many padding slots the window's first slot stands for (1: itself only)
    later: torch.Tensor  # (width, width) True where a key comes after its query


def _groups(real: torch.Tensor) -> list[_Group]:
    """real (B, L): True at the positions that hold an item (the last ones of each row)."""
    batch, length = real.shape
    counts = real.sum(1)
    # at least one padding slot in a narrowed window, for the left-out ones to merge into
    widths = torch.where(counts >= length, length, (2 ** torch.ceil(torch.log2(counts + 1.0))).long().clamp(max=length))
    state_of = (real.flatten().cumsum(0) - 1).view(batch, length)
    groups = []
    for width in torch.unique(widths).tolist():
        rows = (widths == width).nonzero().squeeze(1)
        inside = real[rows, length - width:]
        groups.append(_Group(
            rows=len(rows), width=width, window=inside.flatten().nonzero().squeeze(1),
            states=state_of[rows, length - width:][inside], merged=length - width + 1,
            later=torch.ones(width, width, dtype=torch.bool, device=real.device).triu(diagonal=1),
        ))
    return groups


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"srs.backbones.sasrec: hidden {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.attention_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        for projection in (self.query, self.key, self.value):  # as one (3d x d) xavier-uniform input projection
            nn.init.uniform_(projection.weight, -math.sqrt(6 / (4 * dim)), math.sqrt(6 / (4 * dim)))
            nn.init.zeros_(projection.bias)
        self.output = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.attention_dropout = Dropout(dropout)
        self.feed_forward_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), Dropout(dropout), nn.Linear(dim, dim), Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, groups: list[_Group]) -> torch.Tensor:
        """x (N, d): the states of the batch's N real positions, in row-major order of the window."""
        queries, keys, values = self.query(self.attention_norm(x)), self.key(x), self.value(x)
        # every real position is in one group: the groups' results laid back in place with one copy
        attended = torch.cat([self._attend(group, queries, keys, values) for group in groups])
        attended = torch.zeros_like(x).index_copy(0, torch.cat([group.states for group in groups]), attended)
        x = x + self.output(attended)
        x = self.feed_forward_norm(x)
        return x + self.feed_forward(x)

    def _attend(self, group: _Group, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        dim = queries.shape[1]
        heads, width = self.heads, dim // self.heads

        def window(states: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
            """The group's states laid into (rows, heads, width, d / heads), padding slots filled with `padding`:
            a padding position's state is zero, so its query is zero and its key and value are the biases."""
            full = padding.expand(group.rows * group.width, dim).index_copy(0, group.window, states[group.states])
            return full.view(group.rows, group.width, heads, width).transpose(1, 2)

        scores = window(queries, queries.new_zeros(dim)) @ window(keys, self.key.bias).transpose(-1, -2)
        scores = scores.masked_fill(group.later, float("-inf")) / math.sqrt(width)
        if group.merged > 1:
            scores[..., 0] += math.log(group.merged)
        weights = torch.softmax(scores, -1)
        if self.attention_dropout.training and self.attention_dropout.p > 0:
            weights = weights * self._keep(weights.shape, group.merged, weights.device)
        attended = (weights @ window(values, self.value.bias)).transpose(1, 2).reshape(group.rows * group.width, dim)
        return attended[group.window]

    def _keep(self, shape: torch.Size, merged: int, device: torch.device) -> torch.Tensor:
        """Dropout multipliers of the attention weights; the first slot's add up `merged` slots' draws."""
        keep = self.attention_dropout.mask(shape, device)
        kept = self.attention_dropout.keep_probability
        if merged > 1 and kept > 0:
            draws = torch.binomial(torch.full(shape[:-1], float(merged), device=device),
                                   torch.full(shape[:-1], kept, device=device))
            keep[..., 0] = draws / (merged * kept)
        return keep


class SASRec(Backbone):
    causal = True
    pad_invariant = False

    def __init__(self, items: ItemRepresentation, n_users: int, max_length: int, cfg: SASRecSection) -> None:
        super().__init__(items, cfg.rows)
        self.max_length = max_length
        self.positions = nn.Embedding(max_length, items.dim)
        nn.init.xavier_normal_(self.positions.weight)
        xavier_ids(items)
        self.dropout = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(items.dim, cfg.heads, cfg.dropout) for _ in range(cfg.blocks))
        self.norm = nn.LayerNorm(items.dim, eps=LAYER_NORM_EPS)

    def forward(self, inputs: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        batch, length = inputs.shape
        if length != self.max_length:
            raise ValueError(f"SASRec reads windows of exactly {self.max_length} items, got {length}")
        # position-wise layers run on the real positions only (a sixth of a Beauty window)
        real = inputs != self.items.pad
        where = real.flatten().nonzero().squeeze(1)
        x = self.items(inputs.flatten()[where]) * math.sqrt(self.items.dim) + self.positions.weight[where % length]
        x = self.dropout(x)
        groups = _groups(real)
        for block in self.blocks:
            x = block(x, groups)
        states = x.new_zeros(batch * length, x.shape[1]).index_copy(0, where, self.norm(x))
        return states.view(batch, length, -1)
