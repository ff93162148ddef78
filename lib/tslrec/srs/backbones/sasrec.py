"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence.

As in the reference code behind Xu et al.'s CE results (their public SASRec): item embeddings scaled by sqrt(d)
plus learned positions over a fixed window of max_length (the most recent item always at the last position),
xavier-initialised; each block normalises the queries, attends over the earlier positions of the window with
dropout on the attention weights only, projects and adds the result to the block's input, then normalises and
applies a position-wise two-layer feed-forward network with a residual connection; a final layer norm. Padding
positions are zeroed but stay attendable: their keys are all the same learned "attend to nothing" slot, so the
states depend on the window's length and the window is never trimmed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tslrec.config import SASRecSection
from tslrec.srs.backbones.base import Backbone, xavier_ids
from tslrec.srs.dropout import Dropout
from tslrec.srs.items import ItemRepresentation


LAYER_NORM_EPS = 1e-8


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

    def forward(self, x: torch.Tensor, where: torch.Tensor, batch: int, length: int, later: torch.Tensor) -> torch.Tensor:
        """x (N, d): the states of the N real positions, at `where` in the flattened (batch, length) window.
        later (L, L): True where a key comes after its query (never attended to)."""
        dim = x.shape[1]
        heads, width = self.heads, dim // self.heads

        def window(rows: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
            """(N, d) -> (batch, heads, L, width), padding positions filled with `padding` (d,)."""
            full = padding.expand(batch * length, dim).index_copy(0, where, rows)
            return full.view(batch, length, heads, width).transpose(1, 2)

        # a padding position's state is zero, so its key and value are the projections' biases
        queries = self.attention_norm(x)
        scores = window(self.query(queries), x.new_zeros(dim)) @ window(self.key(x), self.key.bias).transpose(-1, -2)
        weights = self.attention_dropout(torch.softmax(scores.masked_fill(later, float("-inf")) / math.sqrt(width), -1))
        attended = (weights @ window(self.value(x), self.value.bias)).transpose(1, 2).reshape(batch * length, dim)
        x = x + self.output(attended[where])
        x = self.feed_forward_norm(x)
        return x + self.feed_forward(x)


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
        # position-wise layers run on the real positions only (a sixth of a Beauty window); attention on the window
        where = (inputs != self.items.pad).flatten().nonzero().squeeze(1)
        x = self.items(inputs.flatten()[where]) * math.sqrt(self.items.dim) + self.positions.weight[where % length]
        x = self.dropout(x)
        later = torch.ones(length, length, dtype=torch.bool, device=inputs.device).triu(diagonal=1)
        for block in self.blocks:
            x = block(x, where, batch, length, later)
        states = x.new_zeros(batch * length, x.shape[1]).index_copy(0, where, self.norm(x))
        return states.view(batch, length, -1)
