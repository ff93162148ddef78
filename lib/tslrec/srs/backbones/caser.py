"""Caser (Tang & Wang, WSDM 2018): convolutions over the window of the last L item embeddings.

Horizontal filters of every height 1..L (max-pooled over time) catch union-level and point-level sequential
patterns, vertical filters weight the window's items; both feed a fully connected layer whose output is joined
with the user's own embedding. The window is taken at every position, so all positions train at once. Scores
are dot products with the item representations (the output side shares the item table).
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
        windows = padded.unfold(1, self.window, 1)  # (B, L, window): the window ending at each position
        x = self.items(windows).reshape(b * length, 1, self.window, self.items.dim)
        vertical = self.vertical(x).flatten(1)
        horizontal = [F.relu(conv(x).squeeze(3)).amax(dim=2) for conv in self.horizontal]
        z = F.relu(self.hidden(self.dropout(torch.cat([vertical, *horizontal], dim=1))))
        own = self.users(users).repeat_interleave(length, dim=0)
        return self.out(torch.cat([z, own], dim=1)).view(b, length, -1)
