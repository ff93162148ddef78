"""Caser (Tang & Wang, WSDM 2018): convolutions over the window of the last L item embeddings.

Horizontal filters of every height 1..L (max-pooled over time) catch union-level and point-level sequential
patterns, vertical filters weight the window's items; both feed a fully connected layer whose output is joined
with the user's own embedding. The window is taken at every position, so all positions train at once. Scores
are dot products with the item representations (the output side shares the item table).

The convolutions' weights are applied as projections of each position, not as Conv2d over each window: a
position is in `window` windows, and Conv2d's backward pass on (B * L) one-channel windows was most of a step
(a Beauty epoch 3x slower). The parameters, their initialisation and the result are the convolutions'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tslrec.config import CaserSection
from tslrec.srs.backbones.base import Backbone
from tslrec.srs.dropout import Dropout
from tslrec.srs.items import INIT_STD, ItemRepresentation


class Caser(Backbone):
    causal = True

    def __init__(self, items: ItemRepresentation, n_users: int, max_length: int, cfg: CaserSection) -> None:
        super().__init__(items, cfg.rows)
        dim, window = items.dim, cfg.window
        self.window = window
        self.users = nn.Embedding(n_users, dim)
        nn.init.normal_(self.users.weight, std=INIT_STD)
        self.vertical = nn.Conv2d(1, cfg.vertical, (window, 1))
        self.horizontal = nn.ModuleList(nn.Conv2d(1, cfg.horizontal, (h, dim)) for h in range(1, window + 1))
        self.dropout = Dropout(cfg.dropout)
        self.hidden = nn.Linear(cfg.vertical * dim + cfg.horizontal * window, dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, inputs: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        b, length = inputs.shape
        padded = F.pad(inputs, (self.window - 1, 0), value=self.items.pad)
        x = self.items(padded)  # (B, L + window - 1, d): position p's window is x[:, p : p + window]
        features = torch.cat([self._vertical(x), *self._horizontal(x, length)], dim=-1)
        z = F.relu(self.hidden(self.dropout(features.flatten(0, 1))))
        own = self.users(users).repeat_interleave(length, dim=0)
        return self.out(torch.cat([z, own], dim=1)).view(b, length, -1)

    def _vertical(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, vertical * d), laid out as the convolution's flattened (channel, d) output."""
        weights = self.vertical.weight.flatten(1)  # (vertical, window)
        out = x.unfold(1, self.window, 1) @ weights.T  # (B, L, d, vertical)
        return (out + self.vertical.bias).transpose(2, 3).flatten(2)

    def _horizontal(self, x: torch.Tensor, length: int) -> list[torch.Tensor]:
        """Each height's (B, L, horizontal) max-pooled, rectified filter outputs. Every filter row j of a height h
        meets each position once, whichever window it is in: one matmul projects every position on all filter
        rows of all heights, and a filter's output over a window start is a sum of h shifted projections."""
        rows = torch.cat([conv.weight[:, 0, j] for conv in self.horizontal for j in range(conv.weight.shape[2])])
        projected = (x @ rows.T).split(self.horizontal[0].out_channels, dim=-1)  # one (B, L + w - 1, C) per row
        pooled, row = [], 0
        for height, conv in enumerate(self.horizontal, start=1):
            starts = length + self.window - height  # window starts q whose h rows fit: q + h - 1 <= L + w - 2
            summed = sum(projected[row + j][:, j : j + starts] for j in range(height))
            row += height
            best = summed.unfold(1, self.window - height + 1, 1).amax(dim=-1)  # (B, L, C): over the window's starts
            pooled.append(F.relu(best + conv.bias))
        return pooled
