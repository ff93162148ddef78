"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence.

Embeddings scaled by sqrt(d) plus learned positions (counted back from the most recent item); each block normalises the queries, attends over the
earlier items (padding never attended to), adds the result to the normalised queries, then applies a
position-wise two-layer feed-forward network with a residual connection; a final layer norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tslrec.config import SASRecSection
from tslrec.srs.backbones.base import Backbone
from tslrec.srs.items import ItemRepresentation


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"srs.backbones.sasrec: hidden {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.attention_norm = nn.LayerNorm(dim)
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.dropout = dropout
        self.attention_dropout = nn.Dropout(dropout)
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        queries = self.attention_norm(x)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, length, self.heads, dim // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split(self.query(queries)), split(self.key(x)), split(self.value(x)),
            attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0,
        )
        x = queries + self.attention_dropout(attended.transpose(1, 2).reshape(b, length, dim))
        x = self.feed_forward_norm(x)
        return x + self.feed_forward(x)


class SASRec(Backbone):
    causal = True

    def __init__(self, items: ItemRepresentation, n_users: int, max_length: int, cfg: SASRecSection) -> None:
        super().__init__(items)
        self.max_length = max_length
        self.positions = nn.Embedding(max_length, items.dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(items.dim, cfg.heads, cfg.dropout) for _ in range(cfg.blocks))
        self.norm = nn.LayerNorm(items.dim)

    def forward(self, inputs: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        length = inputs.shape[1]
        real = (inputs != self.items.pad).unsqueeze(-1)
        # positions count back from the most recent item, which is always max_length - 1, however long the input
        positions = torch.arange(self.max_length - length, self.max_length, device=inputs.device)
        x = self.items(inputs) * math.sqrt(self.items.dim) + self.positions(positions)
        x = self.dropout(x) * real
        earlier = torch.ones(length, length, dtype=torch.bool, device=inputs.device).tril()
        # attend to earlier real items; a padding position attends to itself so no row is empty
        allowed = (earlier & real.transpose(1, 2)) | torch.eye(length, dtype=torch.bool, device=inputs.device)
        allowed = allowed.unsqueeze(1)
        for block in self.blocks:
            x = block(x, allowed) * real
        return self.norm(x)
